"""A worker process's entry: it runs what the coordinator hands it on threads of its own and sends back each
outcome; Ctrl-C and the servers are the coordinator's.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

from .evaluation import Evaluation
from .plan import Plan
from .results import Job, Outcome
from .routing import Router
from .tau2_loader import load_tau2


def simulation_worker(plan: Plan, keys: dict[str, str], log_path: Path, threads: int, share: int, line: Any) -> None:
    """A worker process: runs the simulations the coordinator hands it on threads of its own, with its own
    τ²-bench, and sends each outcome back. Ctrl-C and the servers are the coordinator's: it stops the
    worker; the worker also exits when the coordinator's end of the pipe closes. `keys` (what each keyed
    endpoint requires) come through the pipe that spawns it, never its command line or environment."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tau2_run = load_tau2(log_path)
    sending = threading.Lock()

    def tell(message: tuple) -> None:
        with sending, contextlib.suppress(OSError):
            line.send(message)

    ev = Evaluation(tau2_run, plan, Router(plan.agent_urls, keys),
                    Router(plan.user_urls, keys) if plan.user_urls else None,
                    {}, say=lambda text: None, share=share, tell=tell, keys=keys)
    pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim")
    tell(("ready",))

    def run(job: Job, pins: dict[str, str]) -> None:
        outcome = ev.run_one(job, pins)
        counts = {name: (p.rate_limited_calls, p.note) for name, p in ev.pacers.items()}
        try:
            tell(("outcome", outcome, counts))
        except Exception as exc:  # it would not pickle: a bug of ours; say so rather than lose the simulation
            tell(("outcome", Outcome(job, None, outcome.stats, f"cannot send the outcome back: {exc}"), counts))

    while True:
        try:
            kind, *body = line.recv()
        except (EOFError, OSError):
            break
        if kind == "job":
            pool.submit(run, *body)
        elif kind == "gone":
            for router in ev.pools():
                router.mark_dead(body[0])
        elif kind == "back":
            for router in ev.pools():
                if body[0] in router.urls:
                    router.revive(body[0])
    os._exit(0)  # the coordinator is gone: nobody waits for what still runs
