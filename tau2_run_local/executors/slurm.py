"""Servers as SLURM job steps, each started by its own srun and stopped with scancel."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..plan import ServerSpec
from .base import kill_groups, start_process


class SlurmExecutor:
    """Servers as job steps of the allocation, each started by its own srun here. srun turns SIGTERM
    into cancelling its step; SIGKILL becomes `scancel --signal=KILL` of the steps, and returns once
    `squeue --steps` lists none of them (SLURM kills every process of a step)."""

    def __init__(self, job_id: str, env: dict[str, str], settle_s: float = 30.0):
        self.job_id, self.env, self.settle_s = job_id, env, settle_s

    def launch(self, spec: ServerSpec, out: Any, err: Any, secret_env: Mapping[str, str]) -> subprocess.Popen:
        return start_process(spec, out, err, self.env, secret_env)

    def alive(self, proc: subprocess.Popen) -> bool:
        return proc.poll() is None  # srun lasts as long as its step

    def signal(self, procs: Sequence[subprocess.Popen], sig: int) -> None:
        if sig != signal.SIGKILL:
            kill_groups(procs, sig)
            return
        names = {step_name_of(proc) for proc in procs}
        deadline = time.monotonic() + self.settle_s
        while True:
            steps = [step for step, name in self.steps() if name in names]
            if not steps or time.monotonic() > deadline:
                break
            subprocess.run(["scancel", "--signal=KILL", *steps], capture_output=True, env=self.env, timeout=60)
            time.sleep(0.2)
        kill_groups(procs, signal.SIGKILL)  # the srun clients, once their steps are gone

    def steps(self) -> list[tuple[str, str]]:
        """(step id, name) of this job's steps, in one call."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["squeue", "--steps", "--noheader", "--jobs", self.job_id, "--format=%i %j"],
                                 capture_output=True, text=True, env=self.env, timeout=60).stdout
            return [(parts[0], parts[1]) for line in out.splitlines() if len(parts := line.split(None, 1)) == 2]
        return []


def step_name_of(proc: subprocess.Popen) -> str:
    """The step name an srun process was given."""
    assert isinstance(proc.args, (list, tuple))  # start_process gives Popen the spec's argv
    return next((str(a).split("=", 1)[1] for a in proc.args if str(a).startswith("--job-name=")), "")
