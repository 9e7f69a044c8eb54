"""From a --sbatch job's time-limit warning to the next job of its chain running, on the emulated SLURM
cluster of separate hosts (tests/slurm/cluster.py): 2 nodes, a server each, 2-minute jobs, a slow stand-in
that needs about three jobs, no preemption; each job runs into its warning until the work is done.

  .venv/bin/python benchmarks/slurm_resubmit/run.py [--runs 2]

Per transition (a job warned, the next one taking over), from the warning (the SIGTERM: the job's
"stopped N server(s) in X s" line less X; the stop starts there):
  resubmitted   the job's entry in summary.json ends (steps stopped, results and report written, sbatch done)
  old job gone  squeue no longer lists the warned job (polled every 0.2 s)
  next running  squeue shows the next job RUNNING (polled every 0.2 s)
  launcher up   the next job's launcher started (its jobs entry's started_at)
  serving       the next job's servers all serve (its "all servers serve" line)
Needs root (apt-get, the daemons, network namespaces). Writes benchmarks/slurm_resubmit/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "slurm"))
import cluster  # noqa: E402
from common import LAUNCHER, launcher_version, machine  # noqa: E402

STANDIN = ROOT / "tests" / "standin"
LINE = re.compile(r"^(\S+) stopped \d+ server\(s\) in ([\d.]+)s", re.MULTILINE)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def one_chain(folder: Path, env: dict[str, str]) -> list[dict]:
    """Submit one evaluation of 2-minute jobs, follow its chain to the end, and time every transition."""
    model = folder / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["--agent-model", str(model), "--served-model-name", "standin", "--user-llm", "standin",
            "--output-dir", str(folder / "out"), "--log-dir", str(folder / "logs"),
            "--model-config-path", str(folder / "model_config_local.json"), "--domains", "mock", "--num-trials", "5",
            "--num-servers", "2", "--start-port", "auto", "--max-concurrency", "2", "--sbatch", "--slurm-nodes", "2",
            "--slurm-time", "00:02:00"]
    login = {**env, "PYTHONPATH": str(STANDIN), "STANDIN_TOKEN_DELAY": "0.08"}
    done = subprocess.run([sys.executable, str(LAUNCHER), *args], env=login, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    gone: dict[str, float] = {}  # job -> when squeue stopped listing it
    running: dict[str, float] = {}  # job -> when squeue first showed it RUNNING
    listed: set[str] = set()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-n", "run_local", "-o", "%i %T"], capture_output=True, text=True,
                             env=env).stdout.split("\n")
        now = time.time()
        states = dict(line.split() for line in out if line.strip())
        for job, state in states.items():
            if state == "RUNNING":
                running.setdefault(job, now)
        for job in listed - set(states):
            gone.setdefault(job, now)
        listed |= set(states)
        if listed and not states:
            break
        time.sleep(0.2)
    summary = json.loads((folder / "out" / "summary.json").read_text())
    if summary["domains"]["mock"]["status"] != "complete":
        raise SystemExit(f"the chain did not finish: {summary['jobs']}")
    transitions = []
    for job, after in zip(summary["jobs"], summary["jobs"][1:], strict=False):
        log = (folder / "logs" / f"slurm-{job['job_id']}.out").read_text()
        at, took = LINE.findall(log)[-1]
        warned = stamp(at) - float(took)
        serving = re.search(r"^(\S+) all servers serve",
                            (folder / "logs" / f"slurm-{after['job_id']}.out").read_text(), re.MULTILINE)
        transitions.append({
            "job": job["job_id"], "next": after["job_id"], "time_left_s": job["time_left_s"],
            "resubmitted_s": round(stamp(job["ended_at"]) - warned, 2),
            "old_job_gone_s": round(gone[job["job_id"]] - warned, 2),
            "next_running_s": round(running[after["job_id"]] - warned, 2),
            "launcher_up_s": round(stamp(after["started_at"]) - warned, 2),
            "serving_s": round(stamp(serving.group(1)) - warned, 2) if serving else None})
    return transitions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=2)
    runs = p.parse_args().runs
    cluster.install_packages("separate")
    transitions = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        env = {**os.environ, **cluster.start(folder / "cluster", nodes=2, gpus=1, cpus=8, hosts="separate")}
        try:
            for i in range(runs):
                (folder / f"run{i}").mkdir()
                transitions += one_chain(folder / f"run{i}", env)
        finally:
            subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
            cluster.stop(folder / "cluster")
    keys = ("resubmitted_s", "old_job_gone_s", "next_running_s", "launcher_up_s", "serving_s")
    means = {k: round(statistics.mean(t[k] for t in transitions if t[k] is not None), 2) for k in keys}
    report = {"command": "python benchmarks/slurm_resubmit/run.py" + (f" --runs {runs}" if runs != 2 else ""),
              "setup": "emulated SLURM of separate hosts, 2 nodes of 1 fake GPU, a stand-in server each "
                       "(STANDIN_TOKEN_DELAY=0.08), mock x 5 trials, --max-concurrency 2, 2-minute jobs (warned 30 s "
                       "ahead, SLURM's timer up to 60 s earlier)",
              "transitions": transitions, "means_s": means, "machine": machine(), "launcher": launcher_version()}
    print(json.dumps({"transitions": transitions, "means_s": means}, indent=2))
    Path(__file__).with_name("results.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
