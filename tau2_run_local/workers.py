"""Where simulations run: threads of the launcher's own process, or worker processes, each with its own
τ²-bench (one process is GIL-bound at about 1.3 simulations a second); the coordinator keeps routing.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .evaluation import Evaluation
from .results import Job, Outcome, job_key
from .routing import NoLiveServer, Router
from .worker_main import simulation_worker


class Simulators(Protocol):
    """Runs simulations handed to it; the coordinator (evaluate) decides which, when, and how many."""

    def submit(self, job: Job) -> None: ...

    def collect(self, timeout: float) -> list[Outcome]: ...

    def server_gone(self, url: str) -> None: ...

    def server_back(self, url: str) -> None: ...

    def close(self) -> None: ...


class ThreadSimulators:
    """Simulations on threads of this process, sharing its routers and pacers."""

    def __init__(self, ev: Evaluation, threads: int):
        self.ev = ev
        self.pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim")
        self.running: set[futures.Future] = set()

    def submit(self, job: Job) -> None:
        self.running.add(self.pool.submit(self.ev.run_one, job))

    def collect(self, timeout: float) -> list[Outcome]:
        done, self.running = futures.wait(self.running, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        return [fut.result() for fut in done]

    def server_gone(self, url: str) -> None:  # the routers are the coordinator's own
        pass

    def server_back(self, url: str) -> None:
        pass

    def close(self) -> None:
        self.ev.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Worker:
    process: Any  # multiprocessing Process
    line: Any  # our end of its pipe
    running: dict[tuple[str, int, str], tuple[Job, dict[str, str]]] = field(default_factory=dict)
    ready: bool = False  # τ²-bench loaded: it starts what it is handed at once


class ProcessSimulators:
    """Simulations in worker processes, each with its own τ²-bench and threads, one pipe each. The
    coordinator keeps the routing: it pins each simulation's servers (the same least-busy choice as in
    one process), and relays a server's death both ways. Each worker keeps its share of the user's
    pacing limits. Work goes to the least busy worker that has loaded τ²-bench, if any has."""

    def __init__(self, ev: Evaluation, workers: int, threads_each: int, log_path: Path):
        import multiprocessing

        self.ev, self.threads_each, self.log_path = ev, threads_each, log_path
        self.ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self.workers = [self._spawn(workers) for _ in range(workers)]
        self.ready: list[Outcome] = []
        self.pacer_counts: dict[int, dict[str, tuple[int, str]]] = {}

    def _spawn(self, share: int) -> Worker:
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=simulation_worker, name="run_local-simulations", daemon=True,
                                   args=(self.ev.plan, self.ev.keys, self.log_path, self.threads_each, share, theirs))
        process.start()
        theirs.close()
        return Worker(process, ours)

    def submit(self, job: Job) -> None:
        try:
            pins = self._pin()
        except NoLiveServer as exc:
            self.ready.append(Outcome(job, None, Counter(), str(exc)))
            return
        worker = min(self.workers, key=lambda w: (not w.ready, len(w.running)))  # one still loading, last
        worker.running[job_key(job)] = (job, pins)
        worker.line.send(("job", job, pins))

    def _pools(self) -> dict[str, Router | None]:
        return {"agent": self.ev.agent_pool, "user": self.ev.user_pool, **self.ev.expert_pools}

    def _pin(self) -> dict[str, str]:
        pins: dict[str, str] = {}
        try:
            for name, pool in self._pools().items():
                if pool is not None:
                    pins[name] = pool.acquire()
        except NoLiveServer:
            self._unpin(pins)
            raise
        return pins

    def _unpin(self, pins: dict[str, str]) -> None:
        pools = self._pools()
        for name, url in pins.items():
            pool = pools[name]
            assert pool is not None  # _pin pins only the pools there are
            pool.release(url)

    def collect(self, timeout: float) -> list[Outcome]:
        from multiprocessing.connection import wait

        outcomes, self.ready = self.ready, []
        lines = {w.line: i for i, w in enumerate(self.workers)}
        line: Any  # wait() hands back the pipe ends it was given
        for line in wait(list(lines), timeout=0 if outcomes else timeout):
            index = lines[line]
            while line.poll():
                try:
                    kind, *body = line.recv()
                except (EOFError, OSError):  # it died: _lost() below tells what it took with it
                    break
                if kind == "outcome":
                    outcome, self.pacer_counts[index] = body
                    self._unpin(self.workers[index].running.pop(job_key(outcome.job))[1])
                    outcomes.append(outcome)
                elif kind == "ready":
                    self.workers[index].ready = True
                elif kind == "event":
                    self.ev.event(body[0])
                elif kind == "dead":
                    self.ev.on_dead(body[0])
                    self.server_gone(body[0])
        self._absorb_pacing()
        return outcomes + self._lost()

    def _absorb_pacing(self) -> None:
        """The run's pacing as the summary and the progress view report it: the workers' shares summed."""
        for name, pacer in self.ev.pacers.items():
            counts = [c[name] for c in self.pacer_counts.values() if name in c]
            pacer.rate_limited_calls = sum(n for n, _ in counts)
            pacer.note = next((note for _, note in counts if note), pacer.note)

    def _lost(self) -> list[Outcome]:
        """A worker that died took its simulations with it: the machinery's fault, not scored; a new
        worker takes its place."""
        lost = []
        for i, worker in enumerate(self.workers):
            if worker.process.exitcode is None or self.ev.stopping.is_set():
                continue
            why = f"a simulation worker process died (exit code {worker.process.exitcode})"
            self.ev.event(f"{why}; its {len(worker.running)} simulation(s) left undone; starting another")
            for job, pins in worker.running.values():
                self._unpin(pins)
                lost.append(Outcome(job, Evaluation.not_scored(job, "infrastructure", why), Counter()))
            worker.line.close()
            self.workers[i] = self._spawn(len(self.workers))
        return lost

    def _tell_all(self, message: tuple) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.line.send(message)

    def server_gone(self, url: str) -> None:
        self._tell_all(("gone", url))

    def server_back(self, url: str) -> None:
        self._tell_all(("back", url))

    def close(self) -> None:
        """Stop every worker at once: what they still run is abandoned, as threads' would be, and they
        hold nothing worth waiting for (results and files are the coordinator's)."""
        self.ev.stopping.set()
        for worker in self.workers:
            worker.process.kill()
        for worker in self.workers:
            worker.process.join(timeout=5.0)
            worker.line.close()


def make_simulators(ev: Evaluation, log_path: Path) -> Simulators:
    e = ev.plan.eval
    if e.workers <= 1:
        return ThreadSimulators(ev, e.max_concurrency)
    return ProcessSimulators(ev, e.workers, e.max_concurrency, log_path)  # threads are made as needed
