"""tau2_loader"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .defaults import ROUTED
from .experts import ExpertDesk
from .faults import CallGuard


def guarded(model: Any, generate: Callable[[Any, Any], Any], message: Any, state: Any) -> Any:
    """One of τ²-bench's generate_next_message calls, through the simulation's guard: each try goes to the
    guard's server and sees the history as it was before the failed try."""
    kept = len(state.messages)

    def attempt() -> Any:
        if model.guard.lease:
            model.llm_args["api_base"] = model.guard.lease.url
        return generate(message, state)

    def rollback() -> None:
        del state.messages[kept:]

    return model.guard.call(attempt, rollback)


def load_tau2(log_path: Path) -> Any:
    """Import τ²-bench (slow: litellm, pandas) only when a run needs it, its logs going to our log file,
    and register its LLM agent and user simulator with every call guarded (see CallGuard)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from loguru import logger

    logger.remove()
    logger.add(log_path, level="INFO")
    import tau2.run
    from tau2.agent.llm_agent import LLMAgent, LLMGTAgent, LLMSoloAgent
    from tau2.user.user_simulator import UserSimulator

    class Guarded:
        """τ²-bench's agent or user simulator, every model call through the simulation's CallGuard."""

        def __init__(self, *args: Any, llm_args: dict | None = None, **kwargs: Any):
            llm_args = dict(llm_args or {})
            self.guard: CallGuard = llm_args.pop("guard")
            super().__init__(*args, llm_args=llm_args, **kwargs)

        def generate_next_message(self, message: Any, state: Any) -> Any:
            return guarded(self, super().generate_next_message, message, state)

    class RoutedAgent(Guarded, LLMAgent):
        """τ²-bench's LLM agent; with experts, it also has the call_expert tool and hands those turns over."""

        def __init__(self, tools: list, domain_policy: str, llm: str | None = None, llm_args: dict | None = None):
            self.desk: ExpertDesk | None = (llm_args or {}).get("experts")
            if self.desk:
                tools, domain_policy = [*tools, self.desk.tool], f"{domain_policy}\n\n{self.desk.addendum}"
            super().__init__(tools=tools, domain_policy=domain_policy, llm=llm,
                             llm_args={k: v for k, v in (llm_args or {}).items() if k != "experts"})

        def generate_next_message(self, message: Any, state: Any) -> Any:
            reply, state = super().generate_next_message(message, state)
            if self.desk and self.desk.wanted(reply):
                reply = self.desk.hand_over(self, reply, state)
            return reply, state

    class RoutedGTAgent(Guarded, LLMGTAgent):
        pass

    class RoutedSoloAgent(Guarded, LLMSoloAgent):
        pass

    class RoutedUser(Guarded, UserSimulator):
        pass

    routed = {"llm_agent": RoutedAgent, "llm_agent_gt": RoutedGTAgent, "llm_agent_solo": RoutedSoloAgent}
    for stock, cls in routed.items():
        if ROUTED[stock] not in tau2.run.registry.get_agents():
            tau2.run.registry.register_agent(cls, ROUTED[stock])
    if ROUTED["user_simulator"] not in tau2.run.registry.get_users():
        tau2.run.registry.register_user(RoutedUser, ROUTED["user_simulator"])
    return tau2.run
