"""τ²-bench's own agents and user simulator, every model call routed to this run's servers and guarded.

Importing this module imports τ²-bench (slow: litellm, pandas), so only tau2_loader does, once per
process, when a run needs it; tau2_loader also registers these classes under ROUTED's names, the names
results files record.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tau2.agent.llm_agent import LLMAgent, LLMGTAgent, LLMSoloAgent
from tau2.user.user_simulator import UserSimulator

from .experts import ExpertDesk
from .faults import CallGuard


def guarded(model: Any, generate: Callable[[Any, Any], Any], message: Any, state: Any) -> Any:
    """One of τ²-bench's generate_next_message calls, through the simulation's guard: each try goes to the
    guard's server, with its key if it requires one, and sees the history as it was before the failed try."""
    kept = len(state.messages)

    def attempt() -> Any:
        if model.guard.lease:
            model.llm_args.update(model.guard.lease.call_args())
        return generate(message, state)

    def rollback() -> None:
        del state.messages[kept:]

    return model.guard.call(attempt, rollback)


class Guarded:
    """τ²-bench's agent or user simulator, every model call through the simulation's CallGuard (handed
    over in llm_args["guard"], which τ²-bench passes through untouched)."""

    def __init__(self, *args: Any, llm_args: dict | None = None, **kwargs: Any):
        llm_args = dict(llm_args or {})
        self.guard: CallGuard = llm_args.pop("guard")
        super().__init__(*args, llm_args=llm_args, **kwargs)  # type: ignore[call-arg]  # a mixin of τ²-bench's classes

    def generate_next_message(self, message: Any, state: Any) -> Any:
        return guarded(self, super().generate_next_message, message, state)  # type: ignore[misc]  # as above


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
    """τ²-bench's ground-truth agent (llm_agent_gt), guarded."""


class RoutedSoloAgent(Guarded, LLMSoloAgent):
    """τ²-bench's solo agent (llm_agent_solo, with the dummy user), guarded."""


class RoutedUser(Guarded, UserSimulator):
    """τ²-bench's user simulator, guarded: its failures are the user's, never scored against the agent."""


AGENT_CLASSES = {"llm_agent": RoutedAgent, "llm_agent_gt": RoutedGTAgent, "llm_agent_solo": RoutedSoloAgent}
USER_CLASSES = {"user_simulator": RoutedUser}
