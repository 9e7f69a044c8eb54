"""The SLURM executor against a real SLURM cluster emulated on this machine (tests/slurm/cluster.py:
slurmctld, one slurmd per node, fake GPUs handed to job steps as CUDA_VISIBLE_DEVICES). The stand-in
server plays vLLM.

The cluster fixture `slurm` has two layouts (its parameter): "same", where every node is this host at
127.0.0.1 (servers on different nodes get different ports), and "separate", where every node is a host of
its own, a network namespace with its own address; there the launcher runs on the allocation's first
node, as in a batch script, and reaches the servers of the other nodes over the (emulated) network, as on
a cluster. The tests run on separate hosts only: on one host they would prove nothing more, every node's
address being 127.0.0.1 there, and one cluster starts instead of two. TEST_SLURM_HOSTS=same,separate runs
the tests marked IN_LAYOUTS in both, as benchmarks/slurm_hosts does to measure what separate hosts cost."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LAUNCHER, ROOT, launcher_args, run_launcher, standin_env

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import cluster  # noqa: E402  (tests/slurm/, on sys.path above)

STOP_LIMIT_S = 15


class Slurm(dict):
    """The environment SLURM's clients need here (what tests pass as env=), and where the nodes are."""

    def __init__(self, env: dict[str, str], layout: cluster.Layout):
        super().__init__(env)
        self.layout = layout
        self.hosts = layout.hosts
        self.address = layout.addresses  # node -> its address (NodeAddr)

    def on(self, node: str) -> list[str]:
        """The prefix that runs a command on that node ([] when every node is this host)."""
        return self.layout.on(node)


@pytest.fixture(scope="session", params=["separate"])
def slurm(request, tmp_path_factory) -> Iterator[Slurm]:
    """A 2-node cluster of 4 fake GPUs and 8 CPUs per node, laid out as the parameter says (cluster.HOSTS);
    every daemon stopped, and the network namespaces and bridge of separate hosts removed, at the end."""
    folder = tmp_path_factory.mktemp(f"slurm-{request.param}")
    env = cluster.start(folder, nodes=2, gpus=4, cpus=8, hosts=request.param)
    try:
        yield Slurm({**os.environ, **env}, cluster.layout(folder))
    finally:
        subprocess.run(["scancel", "--user=root"], env={**os.environ, **env}, capture_output=True)
        cluster.stop(folder)


LAYOUTS = tuple(os.environ.get("TEST_SLURM_HOSTS", "separate").split(","))
IN_LAYOUTS = pytest.mark.parametrize("slurm", LAYOUTS, indirect=True)


@contextlib.contextmanager
def allocation(slurm: dict[str, str], nodes: int = 2, gpus: int = 4) -> Iterator[dict[str, str]]:
    """A SLURM allocation, and the environment a launcher run inside it sees; cancelled at the end."""
    out = subprocess.run(["salloc", "--no-shell", f"--nodes={nodes}", "--ntasks-per-node=1", "--cpus-per-task=8",
                          f"--gres=gpu:{gpus}", "--job-name=test_alloc"], capture_output=True, text=True, env=slurm,
                         timeout=60)
    job = re.search(r"Granted job allocation (\d+)", out.stderr).group(1)
    nodelist = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True,
                              env=slurm).stdout.strip()
    try:
        yield {"SLURM_CONF": slurm["SLURM_CONF"], "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": nodelist}
    finally:
        subprocess.run(["scancel", job], env=slurm, capture_output=True)


def first_node(alloc: dict[str, str]) -> str:
    """The allocation's first node: where sbatch runs the batch script, so where the launcher runs."""
    return subprocess.run(["scontrol", "show", "hostnames", alloc["SLURM_JOB_NODELIST"]], capture_output=True,
                          text=True, env={**os.environ, **alloc}, check=True).stdout.split()[0]


def launcher_on(slurm: Slurm, alloc: dict[str, str]) -> list[str]:
    """`python run_local.py` on the allocation's first node (on separate hosts: in its namespace)."""
    return [*slurm.on(first_node(alloc)), sys.executable, str(LAUNCHER)]


def run_launcher_on(slurm: Slurm, alloc: dict[str, str], args: list[str],
                    env: dict[str, str]) -> subprocess.CompletedProcess:
    """conftest's run_launcher, on the allocation's first node."""
    return subprocess.run([*launcher_on(slurm, alloc), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=600)


FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def get_json_on(slurm: Slurm, node: str, url: str) -> dict | None:
    """GET url from that node (its namespace on separate hosts); None when nothing answers there."""
    done = subprocess.run([*slurm.on(node), sys.executable, "-c", FETCH, url], capture_output=True, text=True,
                          timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 else None


def our_steps(env: dict[str, str]) -> list[str]:
    """Job steps of the launcher still known to SLURM (their names start with run_local_)."""
    out = subprocess.run(["squeue", "--steps", "-h", "-o", "%i %j"], capture_output=True, text=True, env=env).stdout
    return [line for line in out.splitlines() if " run_local_" in line]


def processes_of(tmp: Path) -> list[str]:
    """Live processes, on any emulated node, whose command line names this test's folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(tmp) in cmd and state != "Z":
            found.append(f"{entry.name} {cmd}")
    return found


def node_of(slurm: Slurm, pid: int) -> str | None:
    """The node whose network namespace the process is in; None for this host's own (or a process gone)."""
    with contextlib.suppress(OSError):
        net = os.stat(f"/proc/{pid}/ns/net")
        return next((node for node, ns in slurm.layout.netns.items()
                     if os.stat(f"/run/netns/{ns}")[:2] == net[:2]), None)  # (inode, device) of the namespace
    return None


def where_they_run(slurm: Slurm, tmp: Path) -> dict[str, set[str | None]]:
    """'launcher', each server's port and 'srun PORT' (the srun client that started it) -> the nodes their
    live processes are on (see node_of)."""
    found: dict[str, set[str | None]] = {}
    for line in processes_of(tmp):
        pid, cmd = line.split(" ", 1)
        port = re.search(r"(?:api_server|cli\.main serve) .*--port (\d+)", cmd)
        key = (("srun " if cmd.startswith("srun ") else "") + port.group(1) if port
               else "launcher" if "run_local.py" in cmd else None)
        if key:
            found.setdefault(key, set()).add(node_of(slurm, int(pid)))
    return found


def assert_nothing_left(env: dict[str, str], tmp: Path) -> None:
    assert our_steps(env) == []
    deadline = time.monotonic() + 5
    while processes_of(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(tmp) == []


def placements(log_dir: Path) -> dict[str, list[dict[str, str]]]:
    """port -> what each start of the stand-in there saw of its placement (CUDA_VISIBLE_DEVICES, node, step)."""
    seen: dict[str, list[dict[str, str]]] = {}
    for err in sorted(log_dir.glob("vllm_port_*.err")):
        for line in err.read_text().splitlines():
            if "placement" in line:
                seen.setdefault(err.name.split("_")[2], []).append(
                    dict(re.findall(r"(\w+)=(\S*)", line.split("placement", 1)[1])))
    return seen


def load_results(path: Path):
    from tau2.data_model.simulation import Results
    return Results.load(path)


# ----------------------------------------------------------------------------------------------


@IN_LAYOUTS
def test_two_nodes_agents_on_both_and_a_user_pool_of_tensor_parallel_2(tmp_path: Path, slurm):
    """3 GPUs a node: agents on n1's three and n2's first, the user server (TP 2) on n2's last two.
    On separate hosts the launcher runs on n1 and reaches n2's servers at n2's address."""
    address = slurm.address
    with allocation(slurm, nodes=2, gpus=3) as alloc:
        port = cluster.free_port_block(5)
        args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "4", "--start-port", str(port),
                             "--user-model", str(tmp_path / "ckpt"), "--user-tensor-parallel-size", "2",
                             "--max-concurrency", "4")
        dry = run_launcher_on(slurm, alloc, [*args, "--dry-run"], env={**alloc, **standin_env()})
        assert dry.returncode == 0, dry.stderr
        assert f"node n1 (clients reach it at {address['n1']})" in dry.stdout
        assert f"node n2 (clients reach it at {address['n2']})" in dry.stdout
        assert f"srun --nodes=1 --ntasks=1 --nodelist=n2 --exact --cpus-per-task=4 --mem=0 --gres=gpu:2 " \
               f"--job-name=run_local_{port + 4}" in dry.stdout
        # bound to 0.0.0.0, every server requires the run's key, which the plan never shows
        assert sum(line.endswith("  key") for line in dry.stdout.splitlines()) == 5
        assert dry.stdout.count(" VLLM_API_KEY=*** srun ") == 5 and "a fresh random key made for this run" in dry.stdout
        result = run_launcher_on(slurm, alloc, args, env={**alloc, **standin_env(spawn_child="1")})
        assert result.returncode == 0, result.stderr
        assert_nothing_left(slurm, tmp_path)
    # the preflight's probes carry the key too: both pools answered them (a 401 would be a warning)
    probed = [line.split(" preflight: ", 1)[1] for line in result.stdout.splitlines() if " preflight: " in line]
    assert [p.split(":")[0] for p in probed[:2]] == ["agent", "user simulator"], probed
    assert not any("warning:" in p or "stop:" in p for p in probed), probed
    seen = {port: starts[0] for port, starts in placements(tmp_path / "logs").items()}
    nodes = {p: seen[str(p)]["SLURMD_NODENAME"] for p in range(port, port + 5)}
    assert nodes == {port: "n1", port + 1: "n1", port + 2: "n1", port + 3: "n2", port + 4: "n2"}
    # SLURM set the GPUs: one each for the agents of n1, all different; two for the user server
    assert sorted(seen[str(p)]["CUDA_VISIBLE_DEVICES"] for p in range(port, port + 3)) == ["0", "1", "2"]
    assert len(seen[str(port + 4)]["CUDA_VISIBLE_DEVICES"].split(",")) == 2
    assert len({seen[str(p)]["SLURM_STEP_ID"] for p in seen}) == 5  # a job step each
    config = json.loads((tmp_path / "model_config_local.json").read_text())
    assert [e["port"] for e in config["standin"]] == [str(p) for p in range(port, port + 4)]
    assert [e["port"] for e in config[str(tmp_path / "ckpt")]] == [str(port + 4)]  # the user pool
    # each server at its own node's address (on separate hosts: n1's and n2's namespaces)
    listed = {int(e["port"]): e["ip_addr"] for pool in ("standin", str(tmp_path / "ckpt")) for e in config[pool]}
    assert listed == {p: address[nodes[p]] for p in nodes}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["simulations"] == 9
    served = summary["agent_conversations_per_server"]
    assert sum(1 for n in served.values() if n) == 4  # all served, n2's agent too (reached from n1)
    assert served[f"http://{address['n2']}:{port + 3}/v1"] > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["executor"] == "slurm" and [s["node"] for s in manifest["servers"]] == ["n1"] * 3 + ["n2"] * 2
    assert manifest["endpoints"]["user"] == [f"http://{address['n2']}:{port + 4}/v1"]


@IN_LAYOUTS
def test_a_step_that_dies_is_routed_around_and_restarted(tmp_path: Path, slurm):
    with allocation(slurm) as alloc:
        port = cluster.free_port_block(2)
        args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--num-servers", "2",
                             "--gpu-ids", "n1:0,n2:0", "--start-port", str(port), "--max-concurrency", "2",
                             "--restart-dead-servers")
        result = run_launcher_on(slurm, alloc, args, env={**alloc, **standin_env(crash_after="4", fault_ports=str(port),
                                                                 token_delay="0.01")})
        assert result.returncode == 0, result.stderr
        assert_nothing_left(slurm, tmp_path)
    events = json.loads((tmp_path / "out" / "summary.json").read_text())["server_events"]
    assert any(f"n1 port {port} died" in e for e in events), events
    assert any("restarting" in e for e in events) and any("serves again" in e for e in events)
    keys = [(s.trial, s.task_id) for s in load_results(tmp_path / "out" / "mock.json").simulations]
    assert len(keys) == len(set(keys)) == 18
    steps = [start["SLURM_STEP_ID"] for starts in placements(tmp_path / "logs").values() for start in starts]
    assert len(steps) == len(set(steps)) >= 3  # every restart is a job step of its own
    at_own_node = [{"ip_addr": slurm.address["n1"], "port": str(port)},
                   {"ip_addr": slurm.address["n2"], "port": str(port + 1)}]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["endpoints"]["agent"] == [f"http://{e['ip_addr']}:{e['port']}/v1" for e in at_own_node]
    listed = json.loads((tmp_path / "model_config_local.json").read_text())["standin"]  # the live ones at the end
    assert listed and all(e in at_own_node for e in listed), listed


@IN_LAYOUTS
def test_ctrl_c_leaves_no_step_and_no_process(tmp_path: Path, slurm):
    with allocation(slurm) as alloc:
        args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "4", "--gpu-ids", "0,1",
                             "--start-port", "auto", "--max-concurrency", "2")
        proc = subprocess.Popen([*launcher_on(slurm, alloc), *args], cwd=ROOT, text=True,
                                env={**os.environ, **alloc, **standin_env(spawn_child="1", token_delay="0.05")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        results = tmp_path / "out" / "mock.json"
        deadline = time.monotonic() + 90
        while not (results.exists() and json.loads(results.read_text())["simulations"]):
            assert time.monotonic() < deadline and proc.poll() is None, "no simulation finished"
            time.sleep(0.2)
        assert len(our_steps(slurm)) == 4
        # every server is reached, from the first node, at the address the endpoint file gives: its own node's
        config = json.loads((tmp_path / "model_config_local.json").read_text())
        entries = [(e["ip_addr"], int(e["port"])) for e in config["standin"]]
        assert sorted(a for a, _ in entries) == sorted([slurm.address["n1"]] * 2 + [slurm.address["n2"]] * 2)
        for host, port in entries:
            stats = get_json_on(slurm, "n1", f"http://{host}:{port}/stats")
            assert stats is not None and stats["port"] == port, (host, port)
        if slurm.hosts == "separate":
            # the launcher runs in n1's namespace, each server in its node's; n1's loopback has none of n2's
            node_at = {address: node for node, address in slurm.address.items()}
            assert where_they_run(slurm, tmp_path) == {"launcher": {"n1"}, **{f"srun {p}": {"n1"} for _, p in entries},
                                                       **{str(p): {node_at[a]} for a, p in entries}}
            assert all(get_json_on(slurm, "n1", f"http://127.0.0.1:{p}/stats") is None
                       for a, p in entries if a == slurm.address["n2"])
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert time.monotonic() - interrupted < STOP_LIMIT_S
        assert_nothing_left(slurm, tmp_path)
        assert time.monotonic() - interrupted < STOP_LIMIT_S
    assert 1 <= len(load_results(results).simulations) < 9


@IN_LAYOUTS
def test_sbatch_submits_a_job_that_writes_the_results_and_resumes(tmp_path: Path, slurm):
    login = {"SLURM_CONF": slurm["SLURM_CONF"], **standin_env()}
    args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "3", "--start-port", "auto",
                         "--sbatch", "--slurm-nodes", "2", "--slurm-time", "10",
                         "--sbatch-arg=--comment=run_local_test")
    script = run_launcher([*args, "--dry-run"], env=login)
    assert script.returncode == 0, script.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --gres=gpu:2", "#SBATCH --time=10", "#SBATCH --comment=run_local_test",
                 "#SBATCH --signal=B:TERM@60"):  # a tenth of the 10 minutes
        assert line in script.stdout
    assert "--executor slurm" in script.stdout and "--sbatch" not in script.stdout.split("exec ", 1)[1]

    def submit_and_wait() -> str:
        submitted = run_launcher(args, env=login)
        assert submitted.returncode == 0, submitted.stderr
        job = re.search(r"submitted SLURM job (\d+)", submitted.stdout).group(1)
        log = Path(re.search(r"^log: (\S+)$", submitted.stdout, re.MULTILINE).group(1))
        assert f"tail -f {log}" in submitted.stdout
        deadline = time.monotonic() + 180
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, env=slurm).stdout.strip():
            assert time.monotonic() < deadline, "the job did not finish"
            launchers.update(where_they_run(slurm, tmp_path).get("launcher", ()))
            time.sleep(0.5)
        return log.read_text()

    launchers: set[str | None] = set()  # nodes the launcher was seen on

    first = submit_and_wait()
    assert "all servers serve" in first and "stopped 3 server(s)" in first, first
    assert launchers == ({"n1"} if slurm.hosts == "separate" else {None})  # the batch script's node
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["status"] == "complete"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["executor"] == "slurm"
    # the batch script ran on the first node; the servers are listed at their own nodes' addresses
    config = json.loads((tmp_path / "model_config_local.json").read_text())
    assert sorted(e["ip_addr"] for e in config["standin"]) == sorted([slurm.address["n1"]] * 2 + [slurm.address["n2"]])
    again = submit_and_wait()
    assert "resuming, 9/9 simulations already done" in again, again
    assert_nothing_left(slurm, tmp_path)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_local.py: error: "), result.stderr
    return lines[0]


def test_bad_input_is_one_line_and_starts_nothing(tmp_path: Path, slurm):
    login = {"SLURM_CONF": slurm["SLURM_CONF"]}
    args = launcher_args(tmp_path, "--domains", "mock")
    assert "needs a SLURM allocation" in one_error_line(run_launcher([*args, "--executor", "slurm"], env=login))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").symlink_to("/usr/bin/srun")
    with allocation(slurm, nodes=2, gpus=2) as alloc:
        too_many = one_error_line(run_launcher([*args, "--num-servers", "5"], env=alloc))
        assert "--num-servers 5 needs 5 GPU groups of 1 but only 4 are available (n1:0,n1:1,n2:0,n2:1)" in too_many
        assert "GPU n2:3 does not exist in this SLURM allocation" in one_error_line(
            run_launcher([*args, "--gpu-ids", "n1:0,n2:3"], env=alloc))
        assert "GPU n1:2 does not exist" in one_error_line(run_launcher([*args, "--gpu-ids", "1,2"], env=alloc))
        assert "needs scontrol, which is not on PATH" in one_error_line(
            run_launcher([*args, "--executor", "slurm"], env={**alloc, "PATH": str(bin_dir)}))
        (bin_dir / "srun").unlink()
        assert "needs srun, which is not on PATH" in one_error_line(
            run_launcher([*args, "--executor", "slurm"], env={**alloc, "PATH": str(bin_dir)}))
        assert "--sbatch submits a job from a login node, but this runs inside SLURM job" in one_error_line(
            run_launcher([*args, "--sbatch"], env=alloc))
        assert our_steps(slurm) == []
    assert not list((tmp_path / "logs").glob("vllm_port_*"))


def server_keys(tmp: Path) -> set[str]:
    """The keys the servers of this test's run hold now (VLLM_API_KEY in their environment, which root reads)."""
    keys = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if str(tmp).encode() in (entry / "cmdline").read_bytes() and b"vllm.entrypoints" in (
                    entry / "cmdline").read_bytes():
                keys |= {v.split(b"=", 1)[1].decode() for v in (entry / "environ").read_bytes().split(b"\0")
                         if v.startswith(b"VLLM_API_KEY=")}
    return keys


def on_a_command_line(secrets: set[str]) -> list[str]:
    """Processes whose command line holds one of the secrets (anyone on the node reads them with ps)."""
    found = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if any(s.encode() in path.read_bytes() for s in secrets):
                found.append(path.parent.name)
    return found


def status_without_key(url: str, method: str = "GET") -> int:
    body = json.dumps({"model": "standin", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("slurm", ["separate"], indirect=True)
def test_sbatch_jobs_outlive_preemption_and_their_time_limit_and_only_the_run_reaches_its_servers(
        tmp_path: Path, slurm):
    """A --sbatch evaluation of 2-minute jobs and a slow stand-in, on separate hosts. The first job is
    preempted (`scancel --signal=TERM --batch`) once a simulation is done; the next runs into its time-limit
    warning; each submits itself again, and the chain finishes on its own: every simulation run once
    (started either to its end, in one job, or interrupted and run again), in the results once, the summary
    τ²-bench's metrics, no step or process left. While it runs, its servers refuse calls without the key
    (401), which no file and no command line holds; what it writes is its owner's alone."""
    # 32 simulations of 2.4-8.5 s (a trial of mock's first 8 tasks: 52 s, 26 s on 2 lanes; 105 s in all): more
    # than a 2-minute job simulates at most (warned 30-60 s before its limit, after ~6 s to start its servers).
    # No preflight: the other tests probe keyed servers on separate hosts; here it would cost each job seconds
    login = {"SLURM_CONF": slurm["SLURM_CONF"], **standin_env(token_delay="0.08")}
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "8", "--num-trials", "4",
                         "--num-servers", "2", "--start-port", "auto", "--max-concurrency", "2", "--sbatch",
                         "--slurm-nodes", "2", "--slurm-time", "00:02:00", "--skip-preflight")
    submitted = run_launcher(args, env=login)
    assert submitted.returncode == 0, submitted.stderr
    first = re.search(r"submitted SLURM job (\d+)", submitted.stdout).group(1)
    script = Path(re.search(r"\(script (\S+)\)", submitted.stdout).group(1))
    assert "#SBATCH --signal=B:TERM@30" in script.read_text()  # a tenth of 2 minutes, at least 30 s
    results, config = tmp_path / "out" / "mock.json", tmp_path / "model_config_local.json"
    deadline = time.monotonic() + 120
    while not (results.exists() and json.loads(results.read_text())["simulations"]):
        assert time.monotonic() < deadline, "the first job finished no simulation"
        time.sleep(0.5)
    keys = server_keys(tmp_path)
    assert len(keys) == 1  # one fresh key for the job's servers
    endpoints = [f"http://{e['ip_addr']}:{e['port']}/v1" for e in json.loads(config.read_text())["standin"]]
    assert sorted(urllib.parse.urlsplit(u).hostname for u in endpoints) == sorted(slurm.address.values())
    for url in endpoints:  # from this host: another user of the cluster network
        assert (status_without_key(f"{url}/models"), status_without_key(f"{url}/chat/completions", "POST")) \
            == (401, 401), url
    assert on_a_command_line(keys) == []
    subprocess.run(["scancel", "--signal=TERM", "--batch", first], env=slurm, check=True)  # preempted
    seen = {first}
    deadline = time.monotonic() + 480
    while True:  # the chain: each job submits the next before it ends
        queued = subprocess.run(["squeue", "-h", "-n", "run_local", "-o", "%i"], capture_output=True, text=True,
                                env=slurm).stdout.split()
        seen |= set(queued)
        keys |= server_keys(tmp_path)
        assert on_a_command_line(keys) == []
        if not queued:
            break
        assert time.monotonic() < deadline, f"the jobs did not finish: {sorted(seen)}"
        time.sleep(0.5)
    assert_nothing_left(slurm, tmp_path)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    jobs = summary["jobs"]
    assert [j["job_id"] for j in jobs] == sorted(seen, key=int) and 3 <= len(jobs) <= 4, jobs
    assert jobs[0]["job_id"] == first and jobs[0]["stopped_by"] == "SIGTERM"
    for job, after in zip(jobs, jobs[1:], strict=False):  # each stopped one submitted the next, which resumed
        assert job["stopped_by"] == "SIGTERM" and job["resubmitted_as"] == after["job_id"], job
        log = (tmp_path / "logs" / f"slurm-{job['job_id']}.out").read_text()
        assert f"submitted again as SLURM job {after['job_id']}" in log, log
    assert 0 < jobs[1]["time_left_s"] <= 95  # the warning: 30 s ahead, SLURM's timer up to 60 s earlier
    assert jobs[-1]["outcome"] == "finished its work" and jobs[-1]["resubmitted_as"] is None
    # every simulation ran once: finished in exactly one job, or interrupted there and started again
    sims = load_results(results).simulations
    assert len({(s.trial, s.task_id) for s in sims}) == len(sims) == 32
    assert sum(j["simulations_finished"] for j in jobs) == 32
    started = sum(p.read_text().count("STARTING SIMULATION") for p in (tmp_path / "logs").glob("run_local_*.log"))
    assert started == 32 + sum(j["simulations_interrupted"] for j in jobs)
    from tau2.metrics.agent_metrics import compute_metrics
    metrics, domain = compute_metrics(load_results(results)), summary["domains"]["mock"]
    assert domain["status"] == "complete" and domain["avg_reward"] == pytest.approx(metrics.avg_reward)
    assert {int(k): v for k, v in domain["pass_hat_k"].items()} == pytest.approx(metrics.pass_hat_ks)
    assert json.loads((tmp_path / "out" / "mock.not_scored.json").read_text()) == []
    # the keys (one per job) are written nowhere; everything written is its owner's alone
    assert len(keys) == len(jobs)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "ckpt" not in p.parts]
    assert script in written and any(p.name.startswith("slurm-") for p in written)
    assert [p for p in written if any(k.encode() in p.read_bytes() for k in keys)] == []
    assert [p for p in written if p.stat().st_mode & 0o077] == []
