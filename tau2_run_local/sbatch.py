"""--sbatch: from a login node, a job script that runs this same command inside an allocation of the size
the plan needs, submitted and followed.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .plan import Node
from .settings import Request
from .util import atomic_write, launcher_argv

SBATCH_ONLY_FLAGS = ("--sbatch", "--slurm-partition", "--slurm-account", "--slurm-time", "--slurm-nodes",
                     "--sbatch-arg", "--executor")


def job_argv(argv: Sequence[str]) -> list[str]:
    """The command line the job runs: this one without the submitting options, on the SLURM executor."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in SBATCH_ONLY_FLAGS:
            skip = "=" not in arg and flag != "--sbatch"
            continue
        out.append(arg)
    return [*out, "--executor", "slurm"]


def job_script(request: Request, argv: Sequence[str], nodes: Sequence[Node], cwd: Path) -> str:
    """The batch script: the resources the plan needs, a warning signal before the time limit (the
    launcher stops its steps and writes its report), and the launcher in the batch shell itself (under
    srun the steps it starts would wait forever)."""
    log = Path(request.log_dir).resolve() / "slurm-%j.out"
    lines = ["#!/bin/bash", "#SBATCH --job-name=run_local", f"#SBATCH --nodes={len(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={nodes[0].cpus}",
             f"#SBATCH --gres=gpu:{len(nodes[0].gpus)}", f"#SBATCH --output={log}", "#SBATCH --signal=B:TERM@120"]
    for flag, value in (("partition", request.slurm_partition), ("account", request.slurm_account),
                        ("time", request.slurm_time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {extra}" for extra in request.sbatch_arg]
    lines += [f"cd {shlex.quote(str(cwd))}",
              "exec " + shlex.join([*launcher_argv(), *job_argv(argv)])]
    return "\n".join(lines) + "\n"


def submit_job(script: str, log_dir: Path, stamp: str, env: dict[str, str]) -> int:
    """sbatch the script (kept in --log-dir) and say where the job's log is and how to follow it."""
    path = log_dir / f"run_local_sbatch_{stamp}.sh"
    atomic_write(path, script)
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"run_local.py: sbatch refused {path}: {done.stderr.strip()}", file=sys.stderr)
        return 1
    job = done.stdout.strip().split(";")[0]
    log = next(line for line in script.splitlines() if line.startswith("#SBATCH --output=")).split("=", 1)[1]
    log = log.replace("%j", job)
    print(f"submitted SLURM job {job} (script {path})\nlog: {log}\n"
          f"follow it: tail -f {shlex.quote(log)}   (state: squeue -j {job}; stop it: scancel {job})")
    return 0
