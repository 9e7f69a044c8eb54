#!/usr/bin/env python3
"""A real SLURM cluster on one machine, for tests and benchmarks: Debian's slurmctld, slurmd and munge,
one slurmd per emulated node (`slurmd -N nK`, a port each), fake GPUs (GRES backed by /dev/null links)
that SLURM hands to job steps as CUDA_VISIBLE_DEVICES. Everything lives in one folder; clients find it
through SLURM_CONF.

    python tests/slurm/cluster.py start DIR [--nodes 4 --gpus 4]   # prints `export SLURM_CONF=...`
    python tests/slurm/cluster.py stop DIR

Needs root (it installs the packages with apt-get when missing and runs the daemons as root).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tau2_run_local.host import port_is_free  # noqa: E402  (the launcher's own check: no SO_REUSEPORT)

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol", "scancel", "munged")


def install_packages() -> None:
    """apt-get the Debian packages unless every binary is already there (idempotent, ~15 s once)."""
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]  # another apt-get may be running (waits instead of failing)
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def free_port_block(count: int) -> int:
    """A first port such that `count` ports from it look free now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            first = sock.getsockname()[1]
        if first + count < 65000 and all(port_is_free("127.0.0.1", first + i) for i in range(count)):
            return first
    raise RuntimeError("no block of free ports")


def node_names(nodes: int) -> list[str]:
    return [f"n{i}" for i in range(1, nodes + 1)]


def write_config(folder: Path, nodes: int, gpus: int, cpus: int) -> Path:
    """slurm.conf and gres.conf for `nodes` emulated nodes of `gpus` fake GPUs and `cpus` CPUs each."""
    host = socket.gethostname()
    for sub in ("state", "spool", "run", "log", "dev"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        dev = folder / "dev" / f"nvidia{i}"
        if not dev.is_symlink():
            dev.symlink_to("/dev/null")  # GRES files must be devices; a plain file is refused
    ports = free_port_block(nodes + 1)
    names = node_names(nodes)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=runlocal",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports}",
        "AuthType=auth/munge", "CredType=cred/munge",
        "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool/slurmd-%n",
        f"SlurmctldPidFile={folder}/run/slurmctld.pid",
        f"SlurmdPidFile={folder}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={folder}/log/slurmctld.log",
        f"SlurmdLogFile={folder}/log/slurmd-%n.log",
        "SlurmdParameters=config_overrides",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "GresTypes=gpu", "ReturnToService=2", "KillWait=5", "MinJobAge=30",
        "MailProg=/bin/true", "MpiDefault=none", "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30", "SlurmdTimeout=60", "InactiveLimit=0",
        *(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports + 1 + i} CPUs={cpus} "
          f"RealMemory=4000 Gres=gpu:{gpus} State=UNKNOWN" for i, name in enumerate(names)),
        f"PartitionName=debug Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    (folder / "gres.conf").write_text(
        "AutoDetect=off\n"
        + "".join(f"NodeName={name} Name=gpu File={folder}/dev/nvidia[0-{gpus - 1}]\n" for name in names))
    return conf


def start_munge(folder: Path) -> None:
    """munged as the munge user, unless one already answers; one started here is stopped with the
    cluster (its pid file is copied next to the daemons')."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    deadline = time.monotonic() + 10
    while subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError("munged did not start")
        time.sleep(0.1)
    shutil.copy(run / "munged.pid", folder / "run" / "munged.pid")


def start(folder: Path, nodes: int = 4, gpus: int = 4, cpus: int = 8) -> dict[str, str]:
    """Start the cluster; returns the environment clients need (SLURM_CONF)."""
    install_packages()
    folder.mkdir(parents=True, exist_ok=True)
    conf = write_config(folder, nodes, gpus, cpus)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    start_munge(folder)
    subprocess.run(["/usr/sbin/slurmctld", "-i", "-f", str(conf)], check=True, env=env)
    for name in node_names(nodes):
        subprocess.run(["/usr/sbin/slurmd", "-N", name, "-f", str(conf)], check=True, env=env)
    deadline = time.monotonic() + 60
    while True:
        idle = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], capture_output=True, text=True,
                              env=env).stdout.split()
        if len(set(idle)) == nodes:
            return {"SLURM_CONF": str(conf)}
        if time.monotonic() > deadline:
            stop(folder)
            raise RuntimeError(f"SLURM nodes not idle after 60 s; see {folder}/log")
        time.sleep(0.2)


def stop(folder: Path) -> None:
    """Stop every daemon of this cluster by the PID in its pid file (munged too, if it started it)."""
    pids = []
    for pid_file in sorted((folder / "run").glob("*.pid")):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pid_file.read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a PID 1 that does not reap leaves <defunct> entries)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("folder", type=Path)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus", type=int, default=4, help="fake GPUs per node")
    p.add_argument("--cpus", type=int, default=8, help="CPUs each node declares")
    a = p.parse_args()
    if a.action == "start":
        env = start(a.folder.resolve(), a.nodes, a.gpus, a.cpus)
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
    else:
        stop(a.folder.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
