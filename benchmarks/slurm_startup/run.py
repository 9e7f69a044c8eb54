"""The SLURM executor against the local one, side by side, on the same 16 servers: time until all serve,
and Ctrl-C to the last server gone.

  .venv/bin/python benchmarks/slurm_startup/run.py

Starts a real SLURM cluster emulated on this machine (tests/slurm/cluster.py: 4 nodes x 4 fake GPUs),
allocates all of it, and runs the launcher with 16 agent servers (stand-ins that take 20 s to start,
STANDIN_STARTUP_DELAY=20) twice: as job steps over the 4 nodes, and as local processes on 16 fake GPUs
(a fake nvidia-smi). Needs root (apt-get, slurmctld). Writes benchmarks/slurm_startup/results.json.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import cluster  # noqa: E402  (tests/slurm/, on sys.path above)
from common import launcher_version, machine  # noqa: E402  (benchmarks/, on sys.path above)

NODES, GPUS, SERVERS, DELAY_S = 4, 4, 16, "20"
# launcher logs kept here
LOG_COPIES = Path(os.environ["BENCH_LOG_COPIES"]) if os.environ.get("BENCH_LOG_COPIES") else None


def stamp(line: str) -> float:
    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def leftovers(tmp: Path, env: dict[str, str]) -> tuple[list[str], int]:
    """Job steps of the launcher still listed, and live processes naming this run's folder."""
    steps = [line for line in subprocess.run(["squeue", "--steps", "-h", "-o", "%i %j"], capture_output=True,
                                             text=True, env=env).stdout.splitlines() if " run_local_" in line]
    procs = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            procs += str(tmp).encode() in cmd and state != "Z" and b"run_local.py" not in cmd
    return steps, procs


def one_run(executor: str, env: dict[str, str]) -> dict:
    """Launch, wait until every server serves, Ctrl-C, wait until no step and no server process is left."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "ckpt").mkdir()
        (tmp / "ckpt" / "config.json").write_text("{}")
        argv = [sys.executable, str(ROOT / "run_local.py"), "--agent-model", str(tmp / "ckpt"),
                "--served-model-name", "m", "--user-llm", "m", "--num-servers", str(SERVERS), "--executor", executor,
                "--domains", "mock", "--num-trials", "20", "--max-concurrency", "4", "--start-port", "auto",
                "--server-timeout", "300", "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
                "--model-config-path", str(tmp / "mc.json")]
        log = tmp / "launcher.out"
        run_env = {**env, "PYTHONPATH": str(ROOT / "tests" / "standin"), "STANDIN_STARTUP_DELAY": DELAY_S,
                   "STANDIN_SPAWN_CHILD": "1", "STANDIN_TOKEN_DELAY": "0.05"}
        with open(log, "w") as out:
            launched = time.time()
            proc = subprocess.Popen(argv, env=run_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        while "all servers serve" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(log.read_text())
            time.sleep(0.05)
        lines = log.read_text().splitlines()
        first_start = min(stamp(line) for line in lines if " started " in line)
        all_serve = stamp(next(line for line in lines if "all servers serve" in line))
        nodes = sorted({m.group(1) for line in lines if (m := re.search(r"server on (n\d+) port", line))})
        time.sleep(2)  # simulations under way
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        while any(leftovers(tmp, env)):
            if time.monotonic() - sent > 120:
                raise SystemExit(f"still left after 120 s: {leftovers(tmp, env)}")
            time.sleep(0.05)
        gone = time.monotonic() - sent
        proc.wait(timeout=120)
        exited = time.monotonic() - sent
        if LOG_COPIES:
            LOG_COPIES.mkdir(parents=True, exist_ok=True)
            (LOG_COPIES / f"{len(list(LOG_COPIES.iterdir()))}_{executor}.out").write_text(log.read_text())
        return {"executor": executor, "servers": SERVERS, "nodes": nodes or ["this machine"],
                "launcher_start_to_first_server_started_s": round(first_start - launched, 2),
                "first_server_started_to_all_serve_s": round(all_serve - first_start, 2),
                "launcher_start_to_all_serve_s": round(all_serve - launched, 2),
                "ctrl_c_to_last_step_and_server_process_gone_s": round(gone, 2),
                "ctrl_c_to_launcher_exit_s": round(exited, 2), "exit_code": proc.returncode}


def fake_gpus(folder: Path, count: int) -> dict[str, str]:
    """A PATH whose nvidia-smi lists `count` GPUs, so the local executor places 16 servers one per GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(count)))
    smi.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def main() -> None:
    with tempfile.TemporaryDirectory() as cluster_dir:
        folder = Path(cluster_dir)
        slurm = {**os.environ, **cluster.start(folder, nodes=NODES, gpus=GPUS, cpus=8)}
        try:
            out = subprocess.run(["salloc", "--no-shell", f"--nodes={NODES}", "--ntasks-per-node=1",
                                  "--cpus-per-task=8", f"--gres=gpu:{GPUS}"], capture_output=True, text=True,
                                 env=slurm, check=True)
            job = re.search(r"Granted job allocation (\d+)", out.stderr).group(1)
            nodelist = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True,
                                      env=slurm).stdout.strip()
            inside = {**slurm, "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": nodelist}
            # τ²-bench's imports once beforehand, so that neither run pays for a cold file cache
            subprocess.run([sys.executable, "-c", "import tau2.run, litellm"], check=True, capture_output=True)
            local = {**os.environ, **fake_gpus(folder / "bin", 16)}
            # ABBA order, so that drift on a shared 2-core machine falls on both executors alike
            runs = [one_run("slurm", inside), one_run("local", local), one_run("local", local),
                    one_run("slurm", inside)]
            subprocess.run(["scancel", job], env=slurm)
        finally:
            cluster.stop(folder)
    def mean(executor: str, key: str) -> float:
        values = [r[key] for r in runs if r["executor"] == executor]
        return round(sum(values) / len(values), 2)

    keys = ("launcher_start_to_first_server_started_s", "first_server_started_to_all_serve_s",
            "launcher_start_to_all_serve_s", "ctrl_c_to_last_step_and_server_process_gone_s",
            "ctrl_c_to_launcher_exit_s")
    means = {executor: {key: mean(executor, key) for key in keys} for executor in ("slurm", "local")}
    report = {
        "command": "python benchmarks/slurm_startup/run.py",
        "setup": f"emulated SLURM 4 nodes x {GPUS} fake GPUs on one machine; {SERVERS} stand-in agent servers "
                 f"that take {DELAY_S} s to start; local executor on 16 fake GPUs (fake nvidia-smi); "
                 "runs in the order slurm, local, local, slurm",
        "runs": runs,
        "means": means,
        "slurm_vs_local": {key: round(means["slurm"][key] / means["local"][key] - 1, 4) for key in keys[:3]},
        "machine": machine(), "launcher": launcher_version(),
    }
    print(json.dumps(report, indent=2))
    Path(__file__).with_name("results.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
