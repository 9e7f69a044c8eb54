"""The servers this run started: started in lanes (a GPU's sharers in turn, or together with a fixed KV cache),
waited for, watched, restarted, and stopped as groups on every way out.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import ServerFailed
from .executors.base import Executor
from .plan import ServerSpec
from .readiness import serves

STOP_GRACE_S = 10.0


ERR_TAIL_LINES = 30


KV_RACE_MARKERS = ("Available KV cache memory: -", "No available memory for the cache blocks")


KV_SIZED_MARKER = "KV cache size:"  # vLLM logs it once memory profiling is over and its KV cache is sized


def tail(path: Path | None, lines: int = ERR_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    """A planned server and what happened to it so far."""

    spec: ServerSpec
    log_dir: Path
    executor: Executor
    key: str = field(default="", repr=False)  # a keyed server's: its VLLM_API_KEY, sent with every check
    proc: subprocess.Popen | None = None
    state: str = "waiting"  # waiting -> starting -> ready -> dead / stopped
    launched_at: float = 0.0
    ready_at: float = 0.0
    attempts: int = 0
    out_path: Path | None = None
    err_path: Path | None = None

    def launch(self) -> None:
        """Start the server in its own process group, logs in <log-dir>/vllm_port_<port>_<time>.out/.err."""
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        self.out_path = self.log_dir / f"vllm_port_{self.spec.port}_{stamp}.out"
        self.err_path = self.log_dir / f"vllm_port_{self.spec.port}_{stamp}.err"
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = self.executor.launch(self.spec, out, err, {"VLLM_API_KEY": self.key} if self.key else {})
        self.state, self.launched_at, self.attempts = "starting", time.monotonic(), self.attempts + 1

    @property
    def process(self) -> subprocess.Popen:
        """The process of a launched server (one in any state but 'waiting')."""
        assert self.proc is not None, f"{self.spec.label} was never launched"
        return self.proc

    def serves(self) -> bool:
        return serves(self.spec.url, self.spec.served_name, timeout=1.0, key=self.key)

    def failure(self, why: str) -> ServerFailed:
        """A failure message with the log tail, vLLM's own error lines (its logger writes to stdout),
        and the command to reproduce it by hand."""
        errors = [line for line in tail(self.out_path, 400).splitlines() if " ERROR " in line or "Error:" in line]
        logged = f"--- last error lines of {self.out_path} ---\n" + "\n".join(errors[-5:]) + "\n" if errors else ""
        return ServerFailed(
            f"{self.spec.label} (GPUs {','.join(self.spec.gpus) or 'none'}) {why}\n"
            f"--- last {ERR_TAIL_LINES} lines of {self.err_path} ---\n{tail(self.err_path)}\n{logged}"
            f"--- reproduce by hand ---\n{self.spec.shell_command()}")

    def memory_settled(self) -> bool:
        """Done profiling GPU memory (its KV cache is sized), so a server sharing its GPU may start: the
        newcomer's own profiling comes after its imports, by when this one's allocation is over."""
        if self.state == "ready":
            return True
        if self.state != "starting" or self.out_path is None:  # out_path: set at launch, with the state
            return False
        try:
            return KV_SIZED_MARKER in self.out_path.read_text(errors="replace")
        except OSError:
            return False

    def lost_memory_race(self) -> bool:
        """vLLM's memory profiling saw another server allocating: worth one more try."""
        text = tail(self.err_path, 200) + tail(self.out_path, 200)
        return any(marker in text for marker in KV_RACE_MARKERS)


class Fleet:
    """The servers this run started. Failure is handled in one place: the first server that dies or
    misses its deadline stops the start, and every process group is killed on the way out. `key`: what
    the keyed servers require, in their environment only."""

    def __init__(self, specs: Sequence[ServerSpec], log_dir: Path, timeout: float,
                 stagger: float | None, say: Callable[[str], None], executor: Executor, key: str = ""):
        self.executor = executor
        self.servers = [Server(spec, log_dir, self.executor, key if spec.keyed else "") for spec in specs]
        self.timeout, self.stagger, self.say = timeout, stagger, say
        self._checks = futures.ThreadPoolExecutor(max_workers=max(len(self.servers), 1))

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> float:
        """Start every server and wait until all serve; returns the seconds it took."""
        began = time.monotonic()
        while True:
            for server in self._due(began):
                server.launch()
                self.say(f"started {server.spec.label} (GPUs {','.join(server.spec.gpus) or 'cpu'}, "
                         f"pid {server.process.pid}), log {server.err_path}")
            self._check_starting()
            if all(s.state == "ready" for s in self.servers):
                return time.monotonic() - began
            time.sleep(0.25)

    def _due(self, began: float) -> list[Server]:
        """Servers to launch now: with --stagger-delay on the old fixed clock, else as soon as every server
        before them on their GPUs has sized its KV cache (two servers profiling memory on one GPU at the
        same moment make one of them fail), or at once where they and those servers have a fixed KV cache
        (no profiling, no race)."""
        waiting = [s for s in self.servers if s.state == "waiting"]
        if self.stagger is not None:
            launched = len(self.servers) - len(waiting)
            return waiting[:1] if waiting and time.monotonic() - began >= launched * self.stagger else []
        due = []
        for server in waiting:
            lane = [s for s in self.servers if s.spec.lane == server.spec.lane]
            fixed = server.spec.kv_cache_bytes is not None
            if all(s.memory_settled() or (fixed and s.spec.kv_cache_bytes is not None)
                   for s in lane[:lane.index(server)]):
                due.append(server)
        return due

    def _check_starting(self) -> None:
        """One readiness round over all starting servers, concurrently; fail fast on any death."""
        starting = [s for s in self.servers if s.state == "starting"]
        ready = self._checks.map(Server.serves, starting)
        for server, is_ready in zip(starting, ready, strict=True):
            code = server.process.poll()
            if code is not None:
                if server.attempts == 1 and server.lost_memory_race():
                    self.say(f"{server.spec.label} lost a GPU memory race at startup; starting it once more")
                    server.launch()
                    continue
                raise server.failure(f"exited with code {code} during startup")
            if is_ready:
                server.state, server.ready_at = "ready", time.monotonic()
                self.say(f"{server.spec.label} serves {server.spec.served_name!r} after "
                         f"{server.ready_at - server.launched_at:.0f}s")
            elif time.monotonic() - server.launched_at > self.timeout:
                raise server.failure(f"did not serve within --server-timeout {self.timeout:.0f}s")

    # -- while the evaluation runs -------------------------------------------------------------

    def reap_dead(self) -> list[Server]:
        """Servers that died since the last look (they are marked dead)."""
        dead = []
        for server in self.servers:
            if server.state == "ready" and server.process.poll() is not None:
                server.state = "dead"
                self.executor.signal([server.process], signal.SIGKILL)  # its engine children must not keep the GPU
                dead.append(server)
        return dead

    def restart(self, server: Server) -> None:
        server.attempts = 0
        server.launch()

    def restarted_ready(self) -> list[Server]:
        """Restarted servers that serve again; a restart that dies is given up."""
        back = []
        for server in self.servers:
            if server.state != "starting":
                continue
            if server.process.poll() is not None or time.monotonic() - server.launched_at > self.timeout:
                server.state = "dead"
                self.executor.signal([server.process], signal.SIGKILL)
                self.say(f"restart of {server.spec.label} failed; see {server.err_path}")
            elif server.serves():
                server.state, server.ready_at = "ready", time.monotonic()
                back.append(server)
        return back

    # -- stop -------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every process group, twice, wait up to `grace`, then SIGKILL what is left. vLLM's
        HTTP server drains open requests on the first signal and quits on the second: the requests
        still open are this run's own, abandoned. A second Ctrl-C (KeyboardInterrupt while waiting)
        skips the wait."""
        self._checks.shutdown(wait=False, cancel_futures=True)
        started = [s for s in self.servers if s.proc is not None]
        if not started:
            return
        began = time.monotonic()
        deadline = began + grace
        try:
            procs = [s.process for s in started]
            self.executor.signal(procs, signal.SIGTERM)
            time.sleep(0.3)
            self.executor.signal(procs, signal.SIGTERM)
            while time.monotonic() < deadline and any(self.executor.alive(s.process) for s in started):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.say("second interrupt: killing the servers now")
        stubborn = [s.spec.label for s in started if self.executor.alive(s.process)]
        self.executor.signal([s.process for s in started], signal.SIGKILL)
        for server in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=5)
            if server.state != "dead":
                server.state = "stopped"
        self.say(f"stopped {len(started)} server(s) in {time.monotonic() - began:.1f}s"
                 + (f"; killed {', '.join(stubborn)}" if stubborn else ""))
