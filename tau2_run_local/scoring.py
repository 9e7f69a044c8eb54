"""Scores as τ²-bench computes them (average reward, pass^k), failures by category, tokens and cost per model,
and the summary of a whole evaluation.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .evaluation import Evaluation
from .plan import hosted
from .preflight import tool_call_format
from .results import DomainRun, sim_reward


def pass_hat_k(trials: int, successes: int, k: int) -> float:
    """pass^k of τ²-bench (arXiv 2406.12045): the chance that k trials drawn without replacement all succeed."""
    return math.comb(successes, k) / math.comb(trials, k)


def is_success(reward: float) -> bool:
    return abs(reward - 1.0) <= 1e-6


def score(simulations: Sequence[Any]) -> dict[str, Any]:
    """Average reward and pass^k (k = 1..the fewest trials any task has), as tau2.metrics computes them."""
    by_task: dict[str, list[float]] = {}
    for sim in simulations:
        by_task.setdefault(sim.task_id, []).append(sim_reward(sim))
    rewards = [r for rs in by_task.values() for r in rs]
    max_k = min((len(rs) for rs in by_task.values()), default=0)
    pass_k = {str(k): sum(pass_hat_k(len(rs), sum(map(is_success, rs)), k) for rs in by_task.values()) / len(by_task)
              for k in range(1, max_k + 1)}
    return {"avg_reward": sum(rewards) / len(rewards) if rewards else None, "pass_hat_k": pass_k}


def usage_by_model(simulations: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Prompt and completion tokens per side: 'agent', 'user' and each expert by name. An expert's turn
    carries the expert's usage, and under raw_data['orchestrator'] that of the agent's call that chose it."""
    used: dict[str, dict[str, int]] = {}

    def add(side: str, usage: dict | None) -> None:
        entry = used.setdefault(side, {"prompt": 0, "completion": 0})
        entry["prompt"] += int((usage or {}).get("prompt_tokens", 0) or 0)
        entry["completion"] += int((usage or {}).get("completion_tokens", 0) or 0)

    add("agent", None)
    add("user", None)
    for sim in simulations:
        for msg in sim.messages:
            role, raw = getattr(msg, "role", None), getattr(msg, "raw_data", None)
            if role == "assistant" and isinstance(raw, dict) and "expert" in raw:
                add(raw["expert"], msg.usage)
                add("agent", raw.get("orchestrator", {}).get("usage"))
            elif role in ("assistant", "user"):
                add("agent" if role == "assistant" else "user", getattr(msg, "usage", None))
    return used


def expert_calls(simulations: Sequence[Any]) -> dict[str, int]:
    """Turns the agent handed to each expert."""
    return dict(Counter(m.raw_data["expert"] for s in simulations for m in s.messages
                        if getattr(m, "role", None) == "assistant" and isinstance(getattr(m, "raw_data", None), dict)
                        and "expert" in m.raw_data))


def api_cost(model: str, used: dict[str, int], prices: Sequence[tuple[str, float, float]] = ()) -> float | str:
    """Dollars for a model: the price the user gave (--price, --expert-info; $ per million tokens), else
    litellm's bundled price map for a hosted model; 'unknown' for one neither prices (a local one)."""
    import litellm

    given = next(((i, o) for name, i, o in prices if name in (model, model.removeprefix("hosted_vllm/"))), None)
    if given:
        return round((used["prompt"] * given[0] + used["completion"] * given[1]) / 1e6, 6)
    price = None if model.startswith("hosted_vllm/") else litellm.model_cost.get(model)
    if not price or "input_cost_per_token" not in price:
        return "unknown"
    return round(used["prompt"] * price["input_cost_per_token"]
                 + used["completion"] * price.get("output_cost_per_token", 0.0), 6)


def costs(used: dict[str, dict[str, int]], models: dict[str, str], prices: Sequence[tuple[str, float, float]],
          rewards: float) -> dict[str, Any]:
    """Cost per model, the total, and the point of an orchestrator: reward per dollar."""
    cost = {side: api_cost(models.get(side, side), tokens, prices) for side, tokens in used.items()}
    total = add_up(cost.values())
    return {"cost_usd": cost, "total_cost_usd": total,
            "reward_per_dollar": round(rewards / total, 4) if isinstance(total, float) and total > 0 else None}


def failure_counts(run: DomainRun) -> dict[str, int]:
    """Why simulations scored 0 through a failure, or were not scored at all, and how many calls the
    machinery made us retry: the model's failures by category (scored 0, as τ²-bench scores them), the
    user simulator's and the machinery's, those a stop interrupted, those never started (not scored)."""
    model = Counter((s.reward_info.info or {}).get("category", "agent_error") if s.reward_info else "agent_error"
                    for s in run.results.simulations if s.termination_reason == "agent_error")
    left = Counter(n.reason for n in run.not_scored.values())
    return {
        "context_overflow": model["context_overflow"], "malformed_tool_call": model["malformed_tool_call"],
        "bad_reply": model["bad_reply"], "other_agent_error": model["agent_error"],
        "user_simulator_error": left["user_simulator_error"], "infrastructure_undone": left["infrastructure"],
        "interrupted": left["interrupted"], "not_started": max(run.total - run.done - sum(left.values()), 0),
        "retried_calls": run.stats["retried_calls"], "recovered_calls": run.stats["recovered_calls"],
        "recovered_simulations": run.stats["recovered_simulations"],
    }


def unparsed_tool_calls(simulations: Iterable[Any]) -> Counter[tuple[str, str]]:
    """Agent replies that carry a tool call as text and none as tool_calls (the server's tool-call parser does
    not read the model's format), counted by (what the text looks like, the vLLM parser that reads it): text
    is judged as the preflight judges its probes' replies."""
    return Counter(found for sim in simulations for msg in sim.messages
                   if getattr(msg, "role", None) == "assistant" and not getattr(msg, "tool_calls", None)
                   and isinstance(content := getattr(msg, "content", None), str)
                   and (found := tool_call_format(content)))


def parser_hint(simulations: Iterable[Any], used: str | None) -> str | None:
    """The closing line for replies that held a tool call as text: how many, and the parser they call for."""
    found = unparsed_tool_calls(simulations)
    if not found:
        return None
    (what, parser), _ = found.most_common(1)[0]
    return (f"run_local.py: {found.total()} agent replies hold a tool call as text ({what}) that the servers' "
            f"tool-call parser did not turn into a call: serve with --tool-call-parser {parser}"
            + (f" (this run used {used})" if used else ""))


def domain_summary(run: DomainRun, models: dict[str, str],
                   prices: Sequence[tuple[str, float, float]] = ()) -> dict[str, Any]:
    sims = run.results.simulations
    used = usage_by_model(sims)
    return {
        "tasks": len({t.id for t in run.results.tasks}), "trials": run.results.info.num_trials,
        "simulations": len(sims), "expected_simulations": run.total, "not_scored": run.total - len(sims),
        **score(sims),
        "termination_reasons": dict(Counter(str(s.termination_reason.value) for s in sims)),
        "failures": failure_counts(run),
        "wall_time_s": round(max(run.finished_at - run.started_at, 0.0), 1) if run.started_at else 0.0,
        "tokens": used, "expert_calls": expert_calls(sims),
        **costs(used, models, prices, sum(sim_reward(s) for s in sims)),
        "status": "failed" if run.error else ("complete" if len(sims) >= run.total else "incomplete"),
        **({"error": run.error} if run.error else {}),
    }


def add_up(values: Iterable[float | str]) -> float | str:
    values = list(values)
    return "unknown" if "unknown" in values else round(sum(v for v in values if not isinstance(v, str)), 6)


def summarize(ev: Evaluation, wall_s: float) -> dict[str, Any]:
    models = {"agent": hosted(ev.plan.agent_name), "user": ev.plan.user_llm,
              **{e.name: e.model for e in ev.plan.experts}}
    domains = {name: domain_summary(run, models, ev.plan.prices) for name, run in ev.runs.items()}
    all_sims = [(name, s) for name, run in ev.runs.items() for s in run.results.simulations]
    overall_sims = [_Tagged(f"{name}/{s.task_id}", s) for name, s in all_sims]
    used = usage_by_model([s for _, s in all_sims])

    def total(key: str) -> dict[str, Any]:
        return {k: sum(d[key][k] for d in domains.values()) for k in next(iter(domains.values()))[key]}

    overall = {
        "tasks": sum(d["tasks"] for d in domains.values()), "simulations": len(all_sims),
        "expected_simulations": sum(d["expected_simulations"] for d in domains.values()),
        "not_scored": sum(d["not_scored"] for d in domains.values()), **score(overall_sims),
        "termination_reasons": dict(sum((Counter(d["termination_reasons"]) for d in domains.values()), Counter())),
        "failures": total("failures"), "wall_time_s": round(wall_s, 1),
        "tokens": used, "expert_calls": dict(sum((Counter(d["expert_calls"]) for d in domains.values()), Counter())),
        **costs(used, models, ev.plan.prices, sum(sim_reward(s) for _, s in all_sims)),
        "rate_limited_calls": {side: pacer.rate_limited_calls for side, pacer in ev.pacers.items()},
    }
    routing = {url: ev.agent_pool.served[url] for url in ev.agent_pool.urls}
    return {"domains": domains, "overall": overall, "agent_conversations_per_server": routing,
            "concurrency": {**ev.concurrency.summary(), "workers": ev.plan.eval.workers},
            "server_events": ev.events}


@dataclass(frozen=True)
class _Tagged:
    """A simulation seen under a domain-qualified task id, so tasks of different domains never merge."""

    task_id: str
    sim: Any

    @property
    def reward_info(self) -> Any:
        return self.sim.reward_info
