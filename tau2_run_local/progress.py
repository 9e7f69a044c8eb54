"""Progress as a person follows it: a live table on a terminal, timestamped lines in a log."""
from __future__ import annotations

import time
from typing import Any

from .evaluation import Evaluation
from .fleet import Fleet
from .results import DomainRun
from .util import now_iso


class ProgressView:
    """Servers (port, GPUs, state, conversations in flight) and one bar per domain (done/total, average
    reward so far, ETA). When stdout is not a terminal (CI, nohup): plain timestamped lines."""

    def __init__(self, console: Any, ev: Evaluation, fleet: Fleet | None, interval: float = 30.0):
        self.console, self.ev, self.fleet, self.interval = console, ev, fleet, interval
        self.live: Any = None
        self._last_line = 0.0
        self._last_counts: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self.render())
            self.live.__exit__(None, None, None)

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.render())
            return
        beat = time.monotonic() - self._last_line > self.interval  # a line now and then, even when idle
        for run in self.ev.runs.values():
            active = run.started_at and not run.finished_at
            settled = run.done + len(run.not_scored)
            if run.started_at and (self._last_counts.get(run.domain) != settled or (beat and active)):
                self._last_counts[run.domain], self._last_line = settled, time.monotonic()
                self.console.print(f"{now_iso()} {self.domain_line(run)}", highlight=False)

    def domain_line(self, run: DomainRun) -> str:
        reward = run.reward_so_far()
        faults = (f", {len(run.not_scored)} not scored" if run.not_scored else "") + (
            f", {run.stats['retried_calls']} calls retried" if run.stats["retried_calls"] else "")
        return (f"{run.domain}: {run.done}/{run.total} simulations, avg reward "
                f"{'-' if reward is None else f'{reward:.3f}'}{faults}, ETA {self.eta(run)}")

    @staticmethod
    def eta(run: DomainRun) -> str:
        if run.error:
            return "failed"
        if run.done + len(run.not_scored) >= run.total:
            return "done"
        if not run.started_at or not run.done:
            return "-"
        elapsed = time.monotonic() - run.started_at
        return f"{elapsed / run.done * (run.total - run.done):.0f}s"

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        servers = Table(title="servers", expand=False)
        for col in ("endpoint", "role", "GPUs", "state", "in flight", "conversations"):
            servers.add_column(col)
        specs = {s.spec.url: s for s in self.fleet.servers} if self.fleet else {}
        for role, pool in (("agent", self.ev.agent_pool), ("user", self.ev.user_pool)):
            if pool is None:
                continue
            for url in pool.urls:
                server = specs.get(url)
                state = server.state if server else ("live" if url in pool.live else "dead")
                gpus = ",".join(server.spec.gpus) if server and server.spec.gpus else "-"
                servers.add_row(url, role, gpus, state, str(pool.in_flight[url]), str(pool.served[url]))
        conc, workers = self.ev.concurrency, self.ev.plan.eval.workers
        notes = [f"{conc.in_flight} simulations in flight, target {conc.target}"
                 f"{' (adaptive)' if conc.adaptive else ''}{f', {workers} worker processes' if workers > 1 else ''}",
                 *(p.note for p in self.ev.pacers.values() if p.note)]
        domains = Table(title="domains", expand=False, caption="; ".join(notes) or None)
        for col in ("domain", "progress", "done", "not scored", "retried calls", "avg reward", "ETA"):
            domains.add_column(col)
        for run in self.ev.runs.values():
            reward = run.reward_so_far()
            domains.add_row(run.domain, ProgressBar(total=max(run.total, 1), completed=run.done, width=30),
                            f"{run.done}/{run.total}", str(len(run.not_scored)), str(run.stats["retried_calls"]),
                            "-" if reward is None else f"{reward:.3f}", self.eta(run))
        return Group(servers, domains)
