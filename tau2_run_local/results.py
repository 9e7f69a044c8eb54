"""One simulation's job and outcome, a domain's results on disk after every simulation (τ²-bench's own
format, with the simulations not scored beside it), and resuming an output folder written earlier.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .defaults import ROUTED
from .errors import UsageError
from .plan import Plan, hosted
from .util import atomic_write, redact


@dataclass(frozen=True)
class Job:
    """One simulation: a task, a trial."""

    domain: str
    task: Any
    trial: int
    seed: int


@dataclass(frozen=True)
class NotScored:
    """A simulation left out of the score: the user simulator failed it ('user_simulator_error', τ²-bench's
    user_error), the machinery did ('infrastructure'), or the run was stopped while it ran ('interrupted').
    Kept in <domain>.not_scored.json; a rerun runs it."""

    task_id: str
    trial: int
    seed: int
    reason: str
    error: str
    at: str


@dataclass(frozen=True)
class Outcome:
    """What one simulation came to: a SimulationRun to score, a NotScored, or None when it could not run
    at all; the calls it retried; and the reason its domain must stop, if the machinery is hopeless."""

    job: Job
    result: Any
    stats: Counter
    stop_domain: str | None = None


@dataclass
class DomainRun:
    """One domain's results, on disk after every finished simulation (τ²-bench's own format), and the
    simulations it could not score, beside it."""

    domain: str
    path: Path
    results: Any  # tau2 Results
    total: int
    secrets: tuple[str, ...]
    not_scored: dict[tuple[int, str], NotScored] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)  # retried and recovered calls, this run
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str | None = None

    @property
    def done(self) -> int:
        return len(self.results.simulations)

    @property
    def side_path(self) -> Path:
        return self.path.with_suffix(".not_scored.json")

    def finished(self) -> set[tuple[int, str]]:
        return {(sim.trial, sim.task_id) for sim in self.results.simulations}

    def record(self, outcome: Outcome) -> None:
        """Called from the main thread only, so writes never interleave."""
        self.stats.update(outcome.stats)
        key = (outcome.job.trial, outcome.job.task.id)
        if outcome.result is None:  # never ran to an end: its domain stopped
            return
        if isinstance(outcome.result, NotScored):
            self.not_scored[key] = outcome.result
            self.save_not_scored()
            return
        self.stats["recovered_simulations"] += bool(outcome.stats.get("recovered_calls"))
        self.results.simulations.append(outcome.result)
        self.save()
        if self.not_scored.pop(key, None):
            self.save_not_scored()

    def save(self) -> None:
        atomic_write(self.path, redact(self.results.model_dump_json(indent=2), self.secrets))

    def save_not_scored(self) -> None:
        entries = [vars(n) for n in sorted(self.not_scored.values(), key=lambda n: (n.trial, n.task_id))]
        atomic_write(self.side_path, redact(json.dumps(entries, indent=2) + "\n", self.secrets))

    def reward_so_far(self) -> float | None:
        rewards = [sim_reward(s) for s in self.results.simulations]
        return sum(rewards) / len(rewards) if rewards else None


def sim_reward(simulation: Any) -> float:
    return simulation.reward_info.reward if simulation.reward_info else 0.0


def run_info(tau2_run: Any, plan: Plan, domain: str) -> Any:
    """τ²-bench's Info for a domain's results file. No endpoint and no key in it: endpoints change
    between resumed runs, keys must never be written."""
    return tau2_run.get_info(
        domain=domain, agent=ROUTED[plan.eval.agent], user=ROUTED[plan.eval.user],
        llm_agent=hosted(plan.agent_name), llm_args_agent=agent_setting(plan),
        llm_user=plan.user_llm, llm_args_user=plan.eval.user_args(),
        num_trials=plan.eval.num_trials, max_steps=plan.eval.max_steps, max_errors=plan.eval.max_errors,
        seed=plan.eval.seed)


def agent_setting(plan: Plan) -> dict[str, Any]:
    """The agent's sampling arguments as the results record them, with its experts and the policy
    addendum's hash when it has experts (τ²-bench's Info has no field of its own for them), so that a
    resume with other experts is refused like one with other sampling."""
    if not plan.experts:
        return plan.eval.agent_args()
    import hashlib

    return {**plan.eval.agent_args(), "run_local_experts": {e.name: e.model for e in plan.experts},
            "run_local_policy_addendum_sha256": hashlib.sha256(plan.policy_addendum.encode()).hexdigest()[:16]}


def stock_name(implementation: str) -> str:
    """τ²-bench's name of an implementation a results file records (ours are its own, routed)."""
    return next((stock for stock, ours in ROUTED.items() if ours == implementation), implementation)


def comparable_fields(info: dict, task_ids: list[str]) -> dict[str, Any]:
    """What must match for old and new simulations to be scored together."""
    return {
        "agent": stock_name(info["agent_info"].get("implementation", "")),
        "user": stock_name(info["user_info"].get("implementation", "")),
        "agent model": info["agent_info"]["llm"], "agent llm args": info["agent_info"].get("llm_args"),
        "user model": info["user_info"]["llm"], "user llm args": info["user_info"].get("llm_args"),
        "max steps": info["max_steps"], "max errors": info["max_errors"], "seed": info["seed"],
        "trials": info["num_trials"], "tasks": sorted(task_ids),
    }


def open_domain(tau2_run: Any, plan: Plan, domain: str, tasks: list, secrets: tuple[str, ...]) -> DomainRun:
    """Start a domain's results file, or resume one; incomparable old results are bad input."""
    from tau2.data_model.simulation import Results

    path = plan.eval.output_dir / f"{domain}.json"
    info = run_info(tau2_run, plan, domain)
    fresh = Results(info=info, tasks=tasks, simulations=[])
    total = len(tasks) * plan.eval.num_trials
    if plan.eval.overwrite or not path.exists():
        return DomainRun(domain, path, fresh, total, secrets)
    try:
        old = Results.model_validate_json(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path} is not a τ²-bench results file; move it away or pass --overwrite") from None
    before = comparable_fields(old.info.model_dump(), [t.id for t in old.tasks])
    now = comparable_fields(info.model_dump(), [t.id for t in tasks])
    changed = [k for k in now if before[k] != now[k]]
    if changed:
        raise UsageError(f"{path} holds results of a different setting ({', '.join(changed)} changed); "
                         "pass --overwrite to start afresh or use another --output-dir")
    wanted = {(trial, t.id) for trial in range(plan.eval.num_trials) for t in tasks}
    old.simulations = [s for s in old.simulations if (s.trial, s.task_id) in wanted]
    run = DomainRun(domain, path, old, total, secrets)
    run.not_scored = {key: entry for key, entry in read_not_scored(run.side_path).items()
                      if key in wanted and key not in run.finished()}
    return run


def read_not_scored(path: Path) -> dict[tuple[int, str], NotScored]:
    """The side file of an earlier run; unreadable means nothing to carry over (it is a record, not results)."""
    try:
        entries = json.loads(path.read_text())
        return {(e["trial"], e["task_id"]): NotScored(**e) for e in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def failed_simulation(job: Job, category: str, error: str) -> Any:
    """What τ²-bench records for a sample the agent model broke (its skip_failed_samples): agent_error,
    reward 0; the category (context_overflow, malformed_tool_call, ...) says how."""
    from tau2.data_model.simulation import RewardInfo, SimulationRun, TerminationReason

    now = datetime.now().isoformat()
    return SimulationRun(
        id=f"{job.task.id}_{job.trial}_failed", task_id=job.task.id, start_time=now, end_time=now,
        duration=0.0, termination_reason=TerminationReason.AGENT_ERROR, messages=[], trial=job.trial,
        seed=job.seed, reward_info=RewardInfo(reward=0.0, info={"error": error[:2000], "category": category}),
        skipped=True)


def job_key(job: Job) -> tuple[str, int, str]:
    return job.domain, job.trial, job.task.id
