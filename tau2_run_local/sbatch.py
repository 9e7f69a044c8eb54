"""--sbatch: from a login node, a job script that runs this same command inside an allocation of the size
the plan needs, submitted and followed; inside the job, the job submitted again when its time limit or a
preemption stopped it with simulations left.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .plan import Node
from .settings import Request
from .slurm_discovery import job_fields
from .util import atomic_write, launcher_argv, now_iso
from .validation import slurm_seconds

SBATCH_ONLY_FLAGS = ("--sbatch", "--slurm-partition", "--slurm-account", "--slurm-time", "--slurm-nodes",
                     "--sbatch-arg", "--slurm-max-resubmits", "--executor")


RESUBMIT_STATES = ("RUNNING", "TIMEOUT", "PREEMPTED")  # a job in these, sent SIGTERM, was not cancelled by hand


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


def warning_lead_s(slurm_time: str | None) -> int:
    """Seconds before the time limit SLURM warns the job (SIGTERM to the batch shell, the launcher): enough to
    stop the steps, write the report and submit again; a tenth of the limit, from 30 s up to 120 s. SLURM
    may send it up to a minute earlier still (its timer's resolution), so a 2-minute job runs 30-90 s."""
    limit = slurm_seconds(slurm_time) if slurm_time else None
    return 120 if limit is None else max(30, min(120, limit // 10))


def job_script(request: Request, argv: Sequence[str], nodes: Sequence[Node], cwd: Path,
               secrets: Sequence[str] = ()) -> tuple[str, dict[str, str]]:
    """The batch script, and the environment sbatch must hand the job (the secrets of the command line):
    the resources the plan needs, a warning signal before the time limit (the launcher stops its steps,
    writes its report and submits the job again, up to --slurm-max-resubmits times, which marks the job as
    one of --sbatch's), and the launcher in the batch shell itself (under srun the steps it starts would
    wait forever)."""
    log = Path(request.log_dir).resolve() / "slurm-%j.out"
    lines = ["#!/bin/bash", "#SBATCH --job-name=run_local", f"#SBATCH --nodes={len(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={nodes[0].cpus}",
             f"#SBATCH --gres=gpu:{len(nodes[0].gpus)}", f"#SBATCH --output={log}",
             "#SBATCH --open-mode=append",  # a job SLURM requeues keeps its first run's lines
             f"#SBATCH --signal=B:TERM@{warning_lead_s(request.slurm_time)}"]
    for flag, value in (("partition", request.slurm_partition), ("account", request.slurm_account),
                        ("time", request.slurm_time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {extra}" for extra in request.sbatch_arg]
    words, handed = shell_words([*launcher_argv(), *job_argv(argv)], secrets)
    lines += [f"export RUN_LOCAL_SBATCH_MAX_RESUBMITS={request.slurm_max_resubmits}",
              f"cd {shlex.quote(str(cwd))}", "exec " + " ".join(words)]
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


@dataclass(frozen=True)
class SbatchJob:
    """This run as a job that --sbatch submitted (its script exports RUN_LOCAL_SBATCH_MAX_RESUBMITS): which
    job, its chain (the first job's id) and the resubmits spent before it, SLURM's own requeues."""

    job_id: str
    max_resubmits: int
    resubmits: int
    chain: str
    restarts: int  # SLURM_RESTART_COUNT: SLURM requeued this job itself (same id) this many times
    started_at: str


def this_job(env: dict[str, str]) -> SbatchJob | None:
    job = env.get("SLURM_JOB_ID")
    if not job or "RUN_LOCAL_SBATCH_MAX_RESUBMITS" not in env:
        return None

    def number(name: str) -> int:
        return int(env.get(name, "0") or 0)

    return SbatchJob(job, number("RUN_LOCAL_SBATCH_MAX_RESUBMITS"), number("RUN_LOCAL_SBATCH_RESUBMITS"),
                     env.get("RUN_LOCAL_SBATCH_CHAIN", job), number("SLURM_RESTART_COUNT"), now_iso())


def earlier_jobs(summary: Path, job: SbatchJob) -> list[dict[str, Any]]:
    """The entries of this job's chain that the summary left by the job before it holds (a requeued job's
    own earlier entry is replaced: one per job id)."""
    try:
        jobs = json.loads(summary.read_text()).get("jobs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [e for e in jobs if isinstance(e, dict) and e.get("chain") == job.chain and e.get("job_id") != job.job_id]


def why_not_resubmit(fields: dict[str, str], job: SbatchJob) -> str | None:
    """Why a job stopped by SIGTERM is not submitted again, or None to submit it. SLURM's view of the job
    tells: a requeue (it runs again under its own id), a cancel by hand (no longer running; at its time
    limit it is COMPLETING with Reason=TimeLimit, which counts as the time limit)."""
    if int(fields.get("Restarts", job.restarts) or 0) > job.restarts:
        return "SLURM requeues it itself (it runs again as the same job and resumes)"
    state = fields.get("JobState", "")
    if state and state not in RESUBMIT_STATES and fields.get("Reason") != "TimeLimit":
        return f"it was cancelled (SLURM state {state})"
    if job.resubmits >= job.max_resubmits:
        return f"its resubmits are spent ({job.resubmits} of --slurm-max-resubmits {job.max_resubmits})"
    return None


def seconds_left(fields: dict[str, str]) -> int | None:
    """Seconds to the job's time limit, from SLURM's EndTime (local time); None where it says none."""
    try:
        return round((datetime.fromisoformat(fields["EndTime"]) - datetime.now()).total_seconds())
    except (KeyError, ValueError):
        return None


def resubmit(job: SbatchJob, script: str, env: dict[str, str]) -> tuple[str | None, str]:
    """sbatch the same script again (SLURM's Command of this job), to start once this job has ended
    (afterany), with the environment this job got (its secrets too) less this job's own SLURM variables;
    (new job id, or None and why not)."""
    if not script:
        return None, "SLURM does not say which script this job ran"
    handed = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    handed |= {"RUN_LOCAL_SBATCH_RESUBMITS": str(job.resubmits + 1), "RUN_LOCAL_SBATCH_CHAIN": job.chain}
    try:
        done = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{job.job_id}", script],
                              capture_output=True, text=True, env=handed, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"sbatch failed: {exc}"
    if done.returncode != 0:
        return None, f"sbatch refused it: {done.stderr.strip()}"
    return done.stdout.strip().split(";")[0], ""


def close_job(job: SbatchJob, env: dict[str, str], stopped_by: str, counts: dict[str, int],
              earlier: list[dict[str, Any]], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """summary.json's `jobs`: the chain's earlier entries and this job's, which says how it ended and what it
    did (counts: simulations finished and interrupted by it, left after it). A job stopped by SIGTERM (its
    time-limit warning, a preemption) with simulations left is submitted again first, unless
    why_not_resubmit says otherwise; one that finished its work, or ended for another reason (its servers
    failed, say), is not."""
    left = counts["simulations_left"]
    entry: dict[str, Any] = {"job_id": job.job_id, "chain": job.chain, "restarts": job.restarts,
                             "started_at": job.started_at, "ended_at": now_iso(), "stopped_by": stopped_by or None,
                             **counts, "resubmitted_as": None}
    if not stopped_by:
        entry["outcome"] = "finished its work" if not left else f"ended with {left} simulation(s) not scored"
    elif stopped_by != "SIGTERM" or not left:
        entry["outcome"] = f"stopped by {stopped_by}" + (f" with {left} simulation(s) left" if left else "")
    else:
        fields = job_fields(job.job_id, env)
        entry["time_left_s"] = seconds_left(fields)
        stopped = (f"stopped by SIGTERM with {left} simulation(s) left"
                   + (f" and {entry['time_left_s']} s of its time" if entry["time_left_s"] is not None else ""))
        why_not = why_not_resubmit(fields, job)
        new, failed = resubmit(job, fields.get("Command", ""), env) if why_not is None else (None, why_not)
        entry["resubmitted_as"] = new
        entry["outcome"] = (f"{stopped}; submitted again as SLURM job {new} (resubmit {job.resubmits + 1} of "
                            f"{job.max_resubmits}), which resumes in the same folders once this one has ended"
                            if new else f"{stopped}; not submitted again: {failed}")
    say(f"SLURM job {job.job_id} {entry['outcome']}")
    return [*earlier, entry]
