"""--sbatch: from a login node, a job script that runs this same command inside an allocation of the size
the plan needs, submitted and followed.
"""
from __future__ import annotations

import re
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


def secret_variable(index: int) -> str:
    """The variable that hands a secret of the command line to the job; its suffix makes the job redact it."""
    return f"RUN_LOCAL_ARG_{index}_SECRET"


def shell_words(argv: Sequence[str], secrets: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line as shell words with every secret value in it replaced by a reference to a variable,
    and those variables (name -> value), which sbatch hands the job in its environment: the script holds
    no secret. A variable sbatch did not hand on stops the job with its name."""
    if not secrets:
        return [shlex.quote(word) for word in argv], {}
    pattern = re.compile("(" + "|".join(map(re.escape, sorted(secrets, key=len, reverse=True))) + ")")
    names: dict[str, str] = {}
    words = []
    for word in argv:
        parts = pattern.split(word)
        for i in range(1, len(parts), 2):
            names.setdefault(parts[i], secret_variable(len(names) + 1))
        words.append(shlex.quote(word) if len(parts) == 1 else "".join(
            f'"${{{names[part]}:?not handed on by sbatch}}"' if i % 2 else shlex.quote(part) if part else ""
            for i, part in enumerate(parts)))
    return words, {name: value for value, name in names.items()}


def job_script(request: Request, argv: Sequence[str], nodes: Sequence[Node], cwd: Path,
               secrets: Sequence[str] = ()) -> tuple[str, dict[str, str]]:
    """The batch script, and the environment sbatch must hand the job (the secrets of the command line):
    the resources the plan needs, a warning signal before the time limit (the launcher stops its steps
    and writes its report), and the launcher in the batch shell itself (under srun the steps it starts
    would wait forever)."""
    log = Path(request.log_dir).resolve() / "slurm-%j.out"
    lines = ["#!/bin/bash", "#SBATCH --job-name=run_local", f"#SBATCH --nodes={len(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={nodes[0].cpus}",
             f"#SBATCH --gres=gpu:{len(nodes[0].gpus)}", f"#SBATCH --output={log}", "#SBATCH --signal=B:TERM@120"]
    for flag, value in (("partition", request.slurm_partition), ("account", request.slurm_account),
                        ("time", request.slurm_time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {extra}" for extra in request.sbatch_arg]
    words, handed = shell_words([*launcher_argv(), *job_argv(argv)], secrets)
    lines += [f"cd {shlex.quote(str(cwd))}", "exec " + " ".join(words)]
    return "\n".join(lines) + "\n", handed


def submit_job(script: str, handed: dict[str, str], path: Path, env: dict[str, str]) -> int:
    """sbatch the script (kept in --log-dir, its owner's alone), the secrets in sbatch's environment, and
    say where the job's log is and how to follow it."""
    atomic_write(path, script)
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True,
                          env={**env, **handed})
    if done.returncode != 0:
        print(f"run_local.py: sbatch refused {path}: {done.stderr.strip()}", file=sys.stderr)
        return 1
    job = done.stdout.strip().split(";")[0]
    log = next(line for line in script.splitlines() if line.startswith("#SBATCH --output=")).split("=", 1)[1]
    log = log.replace("%j", job)
    print(f"submitted SLURM job {job} (script {path})\nlog: {log}\n"
          f"follow it: tail -f {shlex.quote(log)}   (state: squeue -j {job}; stop it: scancel {job})")
    return 0
