"""The shared state of one evaluation's simulations (pools, pacing, health, results) and one simulation run
with stock τ²-bench, every failure judged; the schedule of jobs over the domains.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .concurrency import Concurrency, make_concurrency
from .defaults import ROUTED
from .experts import ExpertDesk
from .faults import CallGuard, EndpointHealth, MachineryFailure, ModelFailure
from .pacing import Pacer
from .plan import Plan, hosted
from .results import DomainRun, Job, NotScored, Outcome, failed_simulation
from .routing import Lease, NoLiveServer, Router
from .util import now_iso


@dataclass
class Evaluation:
    """The shared state of the simulations: pools, their pacing and health, results, and what happened
    to servers."""

    tau2: Any
    plan: Plan
    agent_pool: Router
    user_pool: Router | None
    runs: dict[str, DomainRun]
    say: Callable[[str], None]
    events: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)  # the run is stopping: give up, say nothing
    health: EndpointHealth = field(default_factory=EndpointHealth)
    pacers: dict[str, Pacer] = field(default_factory=dict)
    expert_pools: dict[str, Router] = field(default_factory=dict)  # experts reached at servers
    share: int = 1  # in a worker process: its share of the user's pacing limits is 1/share
    tell: Callable[[tuple], None] | None = None  # in a worker process: its line to the coordinator
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # endpoint -> the key it requires
    interrupted: int = 0  # simulations in flight when the run was stopped
    concurrency: Concurrency = field(init=False)

    def __post_init__(self) -> None:
        e = self.plan.eval

        def part(n: int) -> int:
            return max(1, math.ceil(n / self.share))

        self.concurrency = make_concurrency(self.plan, self.keys)
        self.expert_pools = {x.name: Router(x.urls, self.keys) for x in self.plan.experts if x.urls}
        # the user's own limits hold for the whole run, each worker taking its share; the others only bind
        # once HTTP 429 slows a pool down, which each worker does from its own calls in flight
        rpm = e.faults.user_max_rpm / self.share if e.faults.user_max_rpm else None
        user_limit = part(e.faults.user_max_concurrency) if e.faults.user_max_concurrency else e.max_concurrency
        self.pacers = {"agent": Pacer("agent pool", e.max_concurrency, None, self.event),
                       "user": Pacer("user simulator", user_limit, rpm, self.event),
                       **{x.name: Pacer(f"expert {x.name}", e.max_concurrency, None, self.event)
                          for x in self.plan.experts}}

    def pools(self) -> list[Router]:
        return [p for p in (self.agent_pool, self.user_pool, *self.expert_pools.values()) if p is not None]

    def on_dead(self, url: str) -> None:
        """A server stopped answering: out of every pool, said once (by the coordinator)."""
        if any([pool.mark_dead(url) for pool in self.pools()]) and not self.stopping.is_set():
            if self.tell:
                self.tell(("dead", url))
            else:
                self.event(f"server {url} stopped answering; taken out of routing")

    def event(self, text: str) -> None:
        if self.tell:
            self.tell(("event", text))
            return
        self.events.append(f"{now_iso()} {text}")
        self.say(text)

    def call_args(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """Sampling, plus what our guard needs: no retries inside litellm or the OpenAI client (the guard
        retries, and counts), and a timeout per call."""
        return {**sampling, "num_retries": 0, "max_retries": 0, "timeout": self.plan.eval.faults.request_timeout}

    @contextlib.contextmanager
    def guards(self, stats: Counter, pins: dict[str, str]) -> Iterator[tuple[CallGuard, CallGuard, ExpertDesk | None]]:
        """One simulation's guards (the agent's, the user simulator's, and an expert's at its first call),
        sharing its retry budget; each holds a server of its pool (the one pinned by the coordinator, for
        a worker process) until the simulation ends."""
        budget = [0.0, self.plan.eval.faults.retry_timeout]
        with contextlib.ExitStack() as held:
            def guard(side: str, pool: Router | None, model: str, pacer: str) -> CallGuard:
                lease = held.enter_context(Lease(pool, self.on_dead, pins.get(pacer))) if pool else None
                return CallGuard(side, lease, model, self.pacers[pacer], self.health, budget, stats, self.stopping)

            experts = {x.name: x for x in self.plan.experts}
            taken: dict[str, CallGuard] = {}

            def guard_for(name: str) -> CallGuard:
                if name not in taken:
                    taken[name] = guard(f"expert {name}", self.expert_pools.get(name), experts[name].model, name)
                return taken[name]

            desk = ExpertDesk(experts, guard_for, self.plan.policy_addendum,
                              self.call_args(self.plan.eval.agent_args())) if experts else None
            yield (guard("agent", self.agent_pool, self.plan.agent_name, "agent"),
                   guard("user", self.user_pool, self.plan.user_llm, "user"), desk)

    def run_one(self, job: Job, pins: dict[str, str] | None = None) -> Outcome:
        """One simulation with stock τ²-bench. What a failure means is judged per call (judge_failure):
        the agent model's failure is scored as τ²-bench scores it (agent_error, reward 0); the user
        simulator's is not held against the agent (not scored); the machinery's is retried and, if it
        cannot be got past, leaves the simulation undone. Never raises: a pool with no live server left,
        or a bug of ours, stops the simulation's domain."""
        stats: Counter = Counter()
        try:
            return self._run(job, pins or {}, stats)
        except NoLiveServer as exc:
            return Outcome(job, None, stats, str(exc))
        except Exception as exc:  # a bug of ours: the domain fails, loudly
            return Outcome(job, None, stats, f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job, pins: dict[str, str], stats: Counter) -> Outcome:
        try:
            e = self.plan.eval
            with self.guards(stats, pins) as (agent, user, desk):
                seeded = {"seed": job.seed} if e.deterministic else {}  # the user's own seed wins
                agent_args = {**seeded, **self.call_args(e.agent_args()), "guard": agent,
                              **({"experts": desk} if desk else {})}
                user_args = {**seeded, **self.call_args(e.user_args()), "guard": user}
                simulation = self.tau2.run_task(
                    domain=job.domain, task=job.task, agent=ROUTED[e.agent], user=ROUTED[e.user],
                    llm_agent=hosted(self.plan.agent_name), llm_args_agent=agent_args,
                    llm_user=self.plan.user_llm, llm_args_user=user_args,
                    max_steps=e.max_steps, max_errors=e.max_errors, seed=job.seed)
            simulation.trial = job.trial
            return Outcome(job, simulation, stats)
        except ModelFailure as exc:  # the agent's or an expert it chose: the agent's; the user's: not scored
            if exc.side != "user":
                return Outcome(job, failed_simulation(job, exc.verdict.kind, exc.verdict.detail), stats)
            return Outcome(job, self.not_scored(job, "user_simulator_error", exc.verdict.detail), stats)
        except MachineryFailure as exc:
            return Outcome(job, self.not_scored(job, "infrastructure", str(exc)), stats, exc.stop_domain)
        except NoLiveServer:
            raise
        except Exception as exc:  # τ²-bench failed outside any model call: it scores that as the agent's
            return Outcome(job, failed_simulation(job, "agent_error", f"{type(exc).__name__}: {exc}"), stats)

    @staticmethod
    def not_scored(job: Job, reason: str, error: str) -> NotScored:
        return NotScored(job.task.id, job.trial, job.seed, reason, error[:2000], now_iso())


def schedule(runs: dict[str, DomainRun], seeds: list[int], tasks: dict[str, list], parallel: bool) -> list[list[Job]]:
    """Batches of jobs: one per domain, or one of all domains interleaved (--parallel-domains)."""
    per_domain = []
    for domain, run in runs.items():
        done = run.finished()
        per_domain.append([Job(domain, task, trial, seeds[trial])
                           for trial in range(len(seeds)) for task in tasks[domain]
                           if (trial, task.id) not in done])
    if not parallel:
        return per_domain
    interleaved = [job for group in zip_longest_all(per_domain) for job in group]
    return [interleaved]


def zip_longest_all(lists: list[list[Job]]) -> Iterator[list[Job]]:
    for i in range(max((len(x) for x in lists), default=0)):
        yield [x[i] for x in lists if i < len(x)]
