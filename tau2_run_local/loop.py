"""The evaluation loop: as many simulations in flight as the concurrency allows, outcomes recorded as they
come, dead servers taken out of routing (and restarted if asked), progress redrawn.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from .endpoint_file import config_pools, write_model_config
from .evaluation import Evaluation
from .fleet import Fleet
from .progress import ProgressView
from .results import Job, Outcome, job_key
from .workers import Simulators


def evaluate(ev: Evaluation, batches: list[list[Job]], sims: Simulators, fleet: Fleet | None, view: ProgressView,
             restart_dead: bool, on_progress: Callable[[], None] = lambda: None) -> None:
    """Run the batches, as many simulations in flight as ev.concurrency says, while this (main) thread
    records outcomes, watches the servers and redraws progress (and the report, through on_progress). A
    domain whose servers are all gone, or whose endpoint is hopeless, stops (its simulations not yet
    started are left undone); the others go on. Stopped (Ctrl-C, SIGTERM), the simulations in flight are
    recorded as interrupted, and every domain's wall time is the time it ran."""
    conc = ev.concurrency
    in_flight: dict[tuple[str, int, str], Job] = {}
    try:
        for batch in batches:
            for domain in {job.domain for job in batch}:
                ev.runs[domain].started_at = ev.runs[domain].started_at or time.monotonic()
            waiting = list(reversed(batch))
            running: Counter = Counter()  # simulations in flight per domain
            while waiting or running.total():
                while waiting and conc.in_flight < conc.target:
                    job = waiting.pop()
                    in_flight[job_key(job)] = job
                    sims.submit(job)
                    running[job.domain] += 1
                    conc.in_flight += 1
                conc.observe()
                for outcome in sims.collect(timeout=0.5):
                    job, run = outcome.job, ev.runs[outcome.job.domain]
                    in_flight.pop(job_key(job), None)
                    running[job.domain] -= 1
                    conc.in_flight -= 1
                    run.record(outcome)
                    if outcome.stop_domain and not run.error:
                        run.error = outcome.stop_domain
                        ev.event(f"{job.domain} stopped: {outcome.stop_domain}")
                        waiting = [j for j in waiting if j.domain != job.domain]
                    if not running[job.domain] and not any(j.domain == job.domain for j in waiting):
                        run.finished_at = run.finished_at or time.monotonic()
                watch_fleet(ev, fleet, restart_dead, sims)
                conc.steer(backlog=bool(waiting))
                view.refresh()
                on_progress()
    except KeyboardInterrupt as stop:
        interrupted(ev, list(in_flight.values()), str(stop) or "Ctrl-C")
        raise
    finally:
        ev.stopping.set()  # what is still running gives up; its outcome is not waited for
        now = time.monotonic()
        for run in ev.runs.values():
            if run.started_at and not run.finished_at:
                run.finished_at = now


def interrupted(ev: Evaluation, jobs: list[Job], how: str) -> None:
    """The simulations in flight when the run was stopped: started, never finished, not scored; a rerun
    runs them again."""
    for job in jobs:
        run = ev.runs[job.domain]
        if (job.trial, job.task.id) not in run.finished():
            why = f"the run was stopped ({how}) while this simulation ran; a rerun runs it again"
            run.record(Outcome(job, Evaluation.not_scored(job, "interrupted", why), Counter()))
            ev.interrupted += 1


def watch_fleet(ev: Evaluation, fleet: Fleet | None, restart_dead: bool, sims: Simulators) -> None:
    """A server that died is taken out of routing and the endpoint file; restarted if asked."""
    if fleet is None:
        return
    for server in fleet.reap_dead():
        for pool in ev.pools():
            pool.mark_dead(server.spec.url)
        sims.server_gone(server.spec.url)
        ev.event(f"{server.spec.label} died (exit code {server.process.returncode}); "
                 f"taken out of routing; log {server.err_path}")
        write_live_config(ev)
        if restart_dead:
            fleet.restart(server)
            ev.event(f"restarting {server.spec.label}")
    for server in fleet.restarted_ready():
        for pool in ev.pools():
            if server.spec.url in pool.urls:
                pool.revive(server.spec.url)
        sims.server_back(server.spec.url)
        ev.event(f"{server.spec.label} serves again; back in routing")
        write_live_config(ev)


def write_live_config(ev: Evaluation) -> None:
    write_model_config(ev.plan.config_path, config_pools(ev.plan, set().union(*(p.live for p in ev.pools()))))
