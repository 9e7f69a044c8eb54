"""The orchestration setting: the call_expert tool the agent gets, and the hand-over of its turn to the
expert it names, through that expert's pool and guard.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .defaults import EXPERT_TOOL
from .faults import CallGuard
from .plan import Expert


@dataclass(frozen=True)
class ExpertTool:
    """The call_expert tool, as τ²-bench's generate() reads a tool: by its OpenAI schema."""

    name: str
    openai_schema: dict[str, Any]


def expert_tool(experts: Sequence[Expert]) -> ExpertTool:
    """The tool the agent gets when it has experts: it names the expert that takes this turn."""
    listing = "\n".join(f"- {e.name}: {e.description}" for e in experts)
    return ExpertTool(EXPERT_TOOL, {"type": "function", "function": {
        "name": EXPERT_TOOL,
        "description": "Hand this turn to an expert model. It sees the conversation, the policy and your "
                       "other tools, and its reply (a message or tool calls) is sent in your place. "
                       f"Experts:\n{listing}",
        "parameters": {"type": "object", "required": ["expert"], "properties": {
            "expert": {"type": "string", "enum": [e.name for e in experts], "description": "the expert to call"}}}}})


@dataclass
class ExpertDesk:
    """One simulation's experts: the call_expert tool, and the call that hands the agent's turn to one of
    them, through the expert's pool (its server held for the whole conversation, faults handled by its
    CallGuard). The expert gets the agent's system prompt without the addendum, the history and the
    domain's tools (not call_expert); its reply takes the agent's turn, marked with its name."""

    experts: dict[str, Expert]
    guard_for: Callable[[str], CallGuard]  # the expert's guard, its lease taken at its first call
    addendum: str
    llm_args: dict[str, Any]

    @property
    def tool(self) -> ExpertTool:
        return expert_tool(list(self.experts.values()))

    def wanted(self, reply: Any) -> bool:
        return any(call.name == EXPERT_TOOL and call.arguments.get("expert") in self.experts
                   for call in reply.tool_calls or [])

    def hand_over(self, agent: Any, reply: Any, state: Any) -> Any:
        from tau2.data_model.message import SystemMessage
        from tau2.utils.llm_utils import generate

        call = next(c for c in reply.tool_calls if c.name == EXPERT_TOOL and c.arguments.get("expert") in self.experts)
        expert, guard = self.experts[call.arguments["expert"]], self.guard_for(call.arguments["expert"])
        system = SystemMessage(role="system", content=agent.system_prompt.replace(f"\n\n{self.addendum}", ""))
        history = [system, *state.messages[:-1]]
        tools = [t for t in agent.tools if t.name != EXPERT_TOOL]

        def attempt() -> Any:
            where = guard.lease.call_args() if guard.lease else {}
            return generate(model=expert.model, messages=history, tools=tools, **self.llm_args, **where)

        answer = guard.call(attempt, rollback=lambda: None)
        answer.raw_data = {"expert": expert.name, "expert_model": expert.model,
                           "orchestrator": {"usage": reply.usage, "cost": reply.cost,
                                            "call": {"name": call.name, "arguments": call.arguments}},
                           "expert_response": answer.raw_data}
        state.messages[-1] = answer
        return answer
