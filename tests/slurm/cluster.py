#!/usr/bin/env python3
"""A real SLURM cluster on one machine, for tests and benchmarks: Debian's slurmctld, slurmd and munge,
one slurmd per emulated node (`slurmd -N nK`), fake GPUs (GRES backed by /dev/null links) that SLURM
hands to job steps as CUDA_VISIBLE_DEVICES. Everything lives in one folder; clients find it through
SLURM_CONF.

Two ways to lay the nodes out (`hosts`):
  same      every node is this host: NodeAddr 127.0.0.1 and a port each (fast; the default)
  separate  every node is a host of its own: a network namespace `rlc-nK` whose one interface, eth0,
            has 10.213.7.(10+K)/24 (NodeAddr). The switch is a bridge in a namespace of its own,
            `rlc-switch`, joined by a veth pair to each node and to this namespace, whose end `rlc-up`
            has 10.213.7.1 (there slurmctld and the tests' SLURM clients run). Nothing else has an
            address in that /24 and nothing is routed beyond it (no default route, no NAT); traffic
            between nodes never passes this namespace's firewall (a host with Docker drops bridged
            traffic it forwards). Each slurmd runs in its node's namespace, so everything SLURM starts
            there (the batch script, job steps) does too. munge works across namespaces: its socket is
            a file. `nsenter --net=/run/netns/rlc-nK -- CMD` runs CMD on node nK (`Layout.on`).

    python tests/slurm/cluster.py start DIR [--nodes 4 --gpus 4 --hosts separate]
                                             # prints `export SLURM_CONF=...` (and each node's namespace)
    python tests/slurm/cluster.py stop DIR   # daemons, what is left in the namespaces, namespaces, veths

Needs root (it installs the packages with apt-get when missing and runs the daemons as root); the
separate layout also needs `ip` (iproute2), `nsenter` (util-linux) and a kernel with network
namespaces, veth and bridge.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tau2_run_local.host import port_is_free  # noqa: E402  (the launcher's own check: no SO_REUSEPORT)

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol", "scancel", "munged")
HOSTS = ("same", "separate")
# The separate layout's one private /24: on rlc-up and in the namespaces made here, nowhere else.
SUBNET = "10.213.7"
NETNS_PREFIX = "rlc-"  # node nK's namespace is rlc-nK
SWITCH = "rlc-switch"  # the namespace of the bridge
UPLINK = "rlc-up"  # this namespace's end of its veth pair to the bridge, at SUBNET.1
MAX_NODES = 200  # node K is SUBNET.(10+K)


@dataclass
class Layout:
    """Where each node of a started cluster is (written to DIR/cluster.json as it is built, so that
    `stop` undoes exactly what was made, even after a failed start)."""

    hosts: str = "same"
    addresses: dict[str, str] = field(default_factory=dict)  # node -> NodeAddr
    netns: dict[str, str] = field(default_factory=dict)  # node -> its network namespace (separate only)
    switch: str = ""  # the bridge's namespace, once made
    uplink: str = ""  # this namespace's veth to the bridge, once made

    def on(self, node: str) -> list[str]:
        """The prefix that runs a command on `node`: [] on the same host, else `nsenter` into its network
        namespace (not `ip netns exec`, which remounts /sys and so hides the cgroup mounts slurmd needs)."""
        return ["nsenter", f"--net=/run/netns/{self.netns[node]}", "--"] if self.netns.get(node) else []

    def save(self, folder: Path) -> None:
        (folder / "cluster.json").write_text(json.dumps(self.__dict__, indent=1))


def layout(folder: Path) -> Layout:
    """The layout of the cluster in `folder` (an empty same-host one if it never got that far)."""
    with contextlib.suppress(OSError, ValueError):
        return Layout(**json.loads((folder / "cluster.json").read_text()))
    return Layout()


def install_packages(hosts: str = "same") -> None:
    """apt-get the Debian packages unless every binary is already there (idempotent, ~15 s once); separate
    hosts also need `ip` (iproute2; `nsenter` is util-linux, always there on Debian)."""
    separate = hosts == "separate"
    binaries = (*BINARIES, *(("ip", "nsenter") if separate else ()))
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in binaries):
        return
    apt_get_install([*PACKAGES, *(("iproute2", "util-linux") if separate else ())])


# One apt-get at a time among the tests running at once (pytest-xdist's workers: this cluster's packages and
# test_report's Chromium may be installed together on a fresh machine), and with benchmarks.
APT_LOCK = Path("/tmp/tau2-run-local-apt.lock")


def apt_get_install(packages: list[str], recommends: bool = False) -> None:
    """apt-get update, then install, holding APT_LOCK: DPkg::Lock::Timeout makes the install wait for dpkg's
    lock, but `apt-get update` waits for none (a second one at the same time fails at once)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]  # an apt-get not of ours may be running (waits instead of failing)
    with APT_LOCK.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *([] if recommends else ["--no-install-recommends"]),
                        *packages], check=True, env=env, stdout=subprocess.DEVNULL)


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


def write_config(folder: Path, nodes: int, gpus: int, cpus: int, hosts: str = "same") -> Path:
    """slurm.conf and gres.conf for `nodes` emulated nodes of `gpus` fake GPUs and `cpus` CPUs each: all
    at 127.0.0.1 with a port each, or (separate) each at its own address, all on one port."""
    host = socket.gethostname()
    for sub in ("state", "spool", "run", "log", "dev"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(gpus):
        dev = folder / "dev" / f"nvidia{i}"
        if not dev.is_symlink():
            dev.symlink_to("/dev/null")  # GRES files must be devices; a plain file is refused
    ports = free_port_block(nodes + 1)
    names = node_names(nodes)
    separate = hosts == "separate"
    controller = f"{SUBNET}.1" if separate else "127.0.0.1"
    address = {name: node_address(i + 1) if separate else "127.0.0.1" for i, name in enumerate(names)}
    port = {name: ports + 1 + (0 if separate else i) for i, name in enumerate(names)}
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=runlocal",
        f"SlurmctldHost={host}({controller})",
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
        *(f"NodeName={name} NodeHostname={host} NodeAddr={address[name]} Port={port[name]} CPUs={cpus} "
          f"RealMemory=4000 Gres=gpu:{gpus} State=UNKNOWN" for name in names),
        f"PartitionName=debug Nodes={','.join(names)} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    (folder / "gres.conf").write_text(
        "AutoDetect=off\n"
        + "".join(f"NodeName={name} Name=gpu File={folder}/dev/nvidia[0-{gpus - 1}]\n" for name in names))
    return conf


def node_address(index: int) -> str:
    return f"{SUBNET}.{10 + index}"


def ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        hint = (" (network namespaces need root with CAP_SYS_ADMIN and CAP_NET_ADMIN; in a container, "
                "e.g. docker run --privileged)" if "not permitted" in done.stderr else "")
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}{hint}")


def make_network(folder: Path, names: list[str]) -> Layout:
    """The switch (a bridge in a namespace of its own), this namespace's link to it, and a namespace per
    node linked to it; each step recorded before the next, for `stop`."""
    if not (shutil.which("ip") and shutil.which("nsenter")):
        raise RuntimeError("separate hosts need `ip` and `nsenter` (Debian: apt-get install iproute2 util-linux)")
    if len(names) > MAX_NODES:
        raise RuntimeError(f"at most {MAX_NODES} separate hosts")
    taken = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", f"{SUBNET}.0/24"], capture_output=True,
                           text=True).stdout.strip()
    ours = [SWITCH, *(f"{NETNS_PREFIX}{name}" for name in names)]
    there = set(ours) & {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                                    text=True).stdout.splitlines() if line.strip()}
    if taken or there or Path(f"/sys/class/net/{UPLINK}").exists():
        raise RuntimeError(f"another separate-hosts cluster holds {SUBNET}.0/24, {UPLINK} or namespace(s) "
                           f"{', '.join(sorted(there))}: stop it (`python tests/slurm/cluster.py stop DIR`), or, "
                           f"if it is a stale one, `ip link del {UPLINK}` and `ip netns del NAME` each of "
                           f"{', '.join(ours)}")
    net = Layout("separate")
    net.save(folder)
    ip("netns", "add", SWITCH)
    net.switch = SWITCH
    net.save(folder)
    ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
    ip("-n", SWITCH, "link", "set", "br0", "up")
    ip("link", "add", UPLINK, "type", "veth", "peer", "name", "host", "netns", SWITCH)
    net.uplink = UPLINK
    net.save(folder)
    ip("-n", SWITCH, "link", "set", "host", "master", "br0", "up")
    ip("addr", "add", f"{SUBNET}.1/24", "dev", UPLINK)
    ip("link", "set", UPLINK, "up")
    for i, name in enumerate(names, 1):
        ns = f"{NETNS_PREFIX}{name}"
        ip("netns", "add", ns)
        net.netns[name] = ns
        net.save(folder)
        ip("-n", SWITCH, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", SWITCH, "link", "set", name, "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{node_address(i)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        net.addresses[name] = node_address(i)
    net.save(folder)
    return net


def remove_network(folder: Path, net: Layout) -> None:
    """Undo make_network: end what still runs in the nodes' namespaces (only this cluster's daemons and
    what they started), then the namespaces (the switch's takes the bridge and every veth with it)."""
    spaces = [*net.netns.values(), *([net.switch] if net.switch else [])]
    pids = [pid for ns in spaces for pid in _netns_pids(ns)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [pid for pid in pids if _running(pid)]
        if not pids:
            break
    if net.uplink and Path(f"/sys/class/net/{net.uplink}").exists():
        subprocess.run(["ip", "link", "del", net.uplink], capture_output=True)
    for ns in spaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    Layout(net.hosts, net.addresses).save(folder)  # nothing left to undo


def _netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if pid.isdigit() and int(pid) != os.getpid()]


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


def start(folder: Path, nodes: int = 4, gpus: int = 4, cpus: int = 8, hosts: str = "same") -> dict[str, str]:
    """Start the cluster, its nodes on this host or (hosts="separate") each in a network namespace of its
    own; returns the environment clients need (SLURM_CONF). `layout(folder)` says where each node is. A
    failed start undoes itself."""
    if hosts not in HOSTS:
        raise ValueError(f"hosts must be one of {HOSTS}, not {hosts!r}")
    install_packages(hosts)
    folder.mkdir(parents=True, exist_ok=True)
    names = node_names(nodes)
    try:
        net = make_network(folder, names) if hosts == "separate" else Layout("same", {n: "127.0.0.1" for n in names})
        net.save(folder)
        conf = write_config(folder, nodes, gpus, cpus, hosts)
        env = {**os.environ, "SLURM_CONF": str(conf)}
        start_munge(folder)
        subprocess.run(["/usr/sbin/slurmctld", "-i", "-f", str(conf)], check=True, env=env)
        for name in names:
            subprocess.run([*net.on(name), "/usr/sbin/slurmd", "-N", name, "-f", str(conf)], check=True, env=env)
        deadline = time.monotonic() + 60
        while True:
            idle = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], capture_output=True, text=True,
                                  env=env).stdout.split()
            if len(set(idle)) == nodes:
                return {"SLURM_CONF": str(conf)}
            if time.monotonic() > deadline:
                raise RuntimeError(f"SLURM nodes not idle after 60 s; see {folder}/log")
            time.sleep(0.2)
    except BaseException:
        stop(folder)
        raise


def stop(folder: Path) -> None:
    """Stop every daemon of this cluster by the PID in its pid file (munged too, if it started it); with
    separate hosts, then whatever still runs in the namespaces, and the network made for them."""
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
    net = layout(folder)
    if net.netns or net.switch or net.uplink:
        remove_network(folder, net)


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
    p.add_argument("--hosts", choices=HOSTS, default="same", help="nodes on this host, or each a host of its own")
    a = p.parse_args()
    if a.action == "start":
        env = start(a.folder.resolve(), a.nodes, a.gpus, a.cpus, a.hosts)
        print(f"export SLURM_CONF={env['SLURM_CONF']}")
        net = layout(a.folder.resolve())
        for name, _ns in net.netns.items():
            print(f"# node {name} at {net.addresses[name]}: {' '.join(net.on(name))} CMD")
    else:
        stop(a.folder.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
