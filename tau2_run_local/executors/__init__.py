"""executors"""
from __future__ import annotations

from .base import Executor
from .local import LocalExecutor
from .slurm import SlurmExecutor


def make_executor(name: str, env: dict[str, str]) -> Executor:
    return SlurmExecutor(env["SLURM_JOB_ID"], env) if name == "slurm" else LocalExecutor(env)
