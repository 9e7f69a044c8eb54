"""Where servers run, behind one interface (base.Executor): process groups on this machine (local) or job
steps of a SLURM allocation (slurm). The fleet starts, watches and stops servers only through it.
"""
from __future__ import annotations

from .base import Executor
from .local import LocalExecutor
from .slurm import SlurmExecutor


def make_executor(name: str, env: dict[str, str]) -> Executor:
    return SlurmExecutor(env["SLURM_JOB_ID"], env) if name == "slurm" else LocalExecutor(env)
