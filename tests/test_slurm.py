"""The SLURM executor against a real SLURM cluster emulated on this machine (tests/slurm/cluster.py:
slurmctld, one slurmd per node, fake GPUs handed to job steps as CUDA_VISIBLE_DEVICES). The stand-in
server plays vLLM. Every node of the emulated cluster has the same address, so servers on different
nodes get different ports (on a real cluster they need not)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LAUNCHER, ROOT, launcher_args, run_launcher, standin_env

sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import cluster  # noqa: E402  (tests/slurm/, on sys.path above)

STOP_LIMIT_S = 15


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A 2-node cluster of 4 fake GPUs and 8 CPUs per node; every daemon stopped at the end."""
    folder = tmp_path_factory.mktemp("slurm")
    env = cluster.start(folder, nodes=2, gpus=4, cpus=8)
    try:
        yield {**os.environ, **env}
    finally:
        subprocess.run(["scancel", "--user=root"], env={**os.environ, **env}, capture_output=True)
        cluster.stop(folder)


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


def test_two_nodes_agents_on_both_and_a_user_pool_of_tensor_parallel_2(tmp_path: Path, slurm):
    """3 GPUs a node: agents on n1's three and n2's first, the user server (TP 2) on n2's last two."""
    with allocation(slurm, nodes=2, gpus=3) as alloc:
        port = cluster.free_port_block(5)
        args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "4", "--start-port", str(port),
                             "--user-model", str(tmp_path / "ckpt"), "--user-tensor-parallel-size", "2",
                             "--max-concurrency", "4")
        dry = run_launcher([*args, "--dry-run"], env={**alloc, **standin_env()})
        assert dry.returncode == 0, dry.stderr
        assert "node n1 (clients reach it at 127.0.0.1)" in dry.stdout and "node n2" in dry.stdout
        assert f"srun --nodes=1 --ntasks=1 --nodelist=n2 --exact --cpus-per-task=4 --mem=0 --gres=gpu:2 " \
               f"--job-name=run_local_{port + 4}" in dry.stdout
        result = run_launcher(args, env={**alloc, **standin_env(spawn_child="1")})
        assert result.returncode == 0, result.stderr
        assert_nothing_left(slurm, tmp_path)
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
    assert all(e["ip_addr"] == "127.0.0.1" for e in config["standin"])  # the node's address
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["simulations"] == 9
    assert sum(1 for n in summary["agent_conversations_per_server"].values() if n) == 4  # all served
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["executor"] == "slurm" and [s["node"] for s in manifest["servers"]] == ["n1"] * 3 + ["n2"] * 2


def test_a_step_that_dies_is_routed_around_and_restarted(tmp_path: Path, slurm):
    with allocation(slurm) as alloc:
        port = cluster.free_port_block(2)
        args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--num-servers", "2",
                             "--gpu-ids", "n1:0,n2:0", "--start-port", str(port), "--max-concurrency", "2",
                             "--restart-dead-servers")
        result = run_launcher(args, env={**alloc, **standin_env(crash_after="4", fault_ports=str(port),
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


def test_ctrl_c_leaves_no_step_and_no_process(tmp_path: Path, slurm):
    with allocation(slurm) as alloc:
        args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "4", "--gpu-ids", "0,1",
                             "--start-port", "auto", "--max-concurrency", "2")
        proc = subprocess.Popen([sys.executable, str(LAUNCHER), *args], cwd=ROOT, text=True,
                                env={**os.environ, **alloc, **standin_env(spawn_child="1", token_delay="0.05")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        results = tmp_path / "out" / "mock.json"
        deadline = time.monotonic() + 90
        while not (results.exists() and json.loads(results.read_text())["simulations"]):
            assert time.monotonic() < deadline and proc.poll() is None, "no simulation finished"
            time.sleep(0.2)
        assert len(our_steps(slurm)) == 4
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert time.monotonic() - interrupted < STOP_LIMIT_S
        assert_nothing_left(slurm, tmp_path)
        assert time.monotonic() - interrupted < STOP_LIMIT_S
    assert 1 <= len(load_results(results).simulations) < 9


def test_sbatch_submits_a_job_that_writes_the_results_and_resumes(tmp_path: Path, slurm):
    login = {"SLURM_CONF": slurm["SLURM_CONF"], **standin_env()}
    args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "3", "--start-port", "auto",
                         "--sbatch", "--slurm-nodes", "2", "--slurm-time", "10",
                         "--sbatch-arg=--comment=run_local_test")
    script = run_launcher([*args, "--dry-run"], env=login)
    assert script.returncode == 0, script.stderr
    for line in ("#SBATCH --nodes=2", "#SBATCH --gres=gpu:2", "#SBATCH --time=10", "#SBATCH --comment=run_local_test",
                 "#SBATCH --signal=B:TERM@120"):
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
            time.sleep(1)
        return log.read_text()

    first = submit_and_wait()
    assert "all servers serve" in first and "stopped 3 server(s)" in first, first
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["status"] == "complete"
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["executor"] == "slurm"
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
