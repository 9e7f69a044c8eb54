"""Inside (or for) a SLURM allocation: which executor runs the servers, the allocation's nodes with the CPUs
and GPUs this job holds on each and the addresses other nodes reach them at.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence

from .errors import UsageError
from .plan import Node
from .settings import Request


def slurm_output(argv: Sequence[str], env: dict[str, str]) -> str:
    """What a SLURM client command prints; its failure means the allocation is not usable: bad input."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"{argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UsageError(f"{' '.join(argv[:3])} failed: {why}")
    return done.stdout


def index_list(text: str) -> tuple[str, ...]:
    """SLURM's index ranges: '0-2,5' -> ('0', '1', '2', '5')."""
    ids: list[str] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            ids += [str(i) for i in range(int(low), int(high or low) + 1)]
    return tuple(ids)


def parse_job_nodes(detail: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(node list, CPUs, GPU ids) per line of `scontrol show job -d`, such as
    'Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=gpu:a100:4(IDX:0-3)'."""
    found = []
    for match in re.finditer(r"^\s*Nodes=(\S+) CPU_IDs=(\S+)(.*)$", detail, re.MULTILINE):
        gres = re.search(r"GRES=\S*?gpu[^,(\s]*\(IDX:([^)]*)\)", match.group(3))
        found.append((match.group(1), len(index_list(match.group(2))), index_list(gres.group(1)) if gres else ()))
    return found


def parse_node_addresses(text: str) -> dict[str, str]:
    """NodeName -> NodeAddr from `scontrol -o show node`."""
    return dict(re.findall(r"NodeName=(\S+).*?NodeAddr=(\S+)", text))


def slurm_nodes(env: dict[str, str]) -> tuple[Node, ...]:
    """The allocation's nodes, in SLURM's order, with the GPUs and CPUs this job holds on each and the
    address other nodes reach them at."""
    names = slurm_output(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")], env).split()
    held: dict[str, tuple[int, tuple[str, ...]]] = {}
    for nodelist, cpus, gpus in parse_job_nodes(slurm_output(["scontrol", "show", "job", "-d",
                                                              env["SLURM_JOB_ID"]], env)):
        for name in slurm_output(["scontrol", "show", "hostnames", nodelist], env).split():
            held[name] = (cpus, gpus)
    if not names:
        names = list(held)
    addresses = parse_node_addresses(slurm_output(["scontrol", "-o", "show", "node", ",".join(names)], env))
    return tuple(Node(n, addresses.get(n, n), held.get(n, (1, ()))[1], held.get(n, (1, ()))[0]) for n in names)


def choose_executor(request: Request, env: dict[str, str]) -> str:
    """'slurm' inside an allocation (or to submit one with --sbatch), 'local' otherwise; a SLURM run
    that cannot work is bad input."""
    job = env.get("SLURM_JOB_ID")
    path = env.get("PATH")
    if request.sbatch:
        if job:
            raise UsageError(f"--sbatch submits a job from a login node, but this runs inside SLURM job {job}; "
                             "drop --sbatch to run here")
        missing = [t for t in ("sbatch",) if not shutil.which(t, path=path)]
    elif (request.skip_server_start or request.executor == "local"
          or request.executor == "auto" and not (job and shutil.which("srun", path=path))):
        return "local"
    elif not job:
        raise UsageError("--executor slurm needs a SLURM allocation (SLURM_JOB_ID is not set): run it inside "
                         "salloc or sbatch, or submit it with --sbatch")
    else:
        missing = [t for t in ("srun", "scontrol", "squeue", "scancel") if not shutil.which(t, path=path)]
    if missing:
        raise UsageError(f"the SLURM executor needs {missing[0]}, which is not on PATH")
    return "slurm"


def job_fields(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """What SLURM says of a job now (`scontrol -o show job`: JobState, Reason, Restarts, EndTime, ...); {}
    when it cannot say (the job's end must not fail on it)."""
    try:
        out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                             timeout=30, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", out))
