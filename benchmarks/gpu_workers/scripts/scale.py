#!/usr/bin/env python3
"""Client-side scaling: run_local.py --workers N against instant servers, everything else the same.

    python3 scale.py WORKDIR OUT.json N [N ...]

Starts 4 stand-in servers (tests/standin: OpenAI-compatible, answer at once, known rewards; two retail
tasks listed as failed so rewards are not all 1) as the pool that is "already up", warms them with a short
run, then runs retail (114 tasks) + airline (50) with --parallel-domains --max-concurrency 64 once per N,
and checks every run wrote the same simulations with the same rewards and lengths."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tau2_run_local.endpoint_file import write_model_config  # noqa: E402  (the checkout's package, on sys.path above)
from tau2_run_local.plan import endpoint_url  # noqa: E402  (the checkout's package, on sys.path above)
from tau2_run_local.readiness import serves  # noqa: E402  (the checkout's package, on sys.path above)

PORTS = [8201, 8202, 8203, 8204]
FAILED = "retail/3,retail/8,airline/5"


def launcher(work: Path, name: str, workers: int, *extra: str) -> tuple[float, int, str]:
    cmd = [sys.executable, str(ROOT / "run_local.py"), "--skip-server-start", "--model-config-path",
           str(work / "mc.json"), "--user-llm", "standin", "--domains", "retail", "airline", "--parallel-domains",
           "--workers", str(workers), "--output-dir", str(work / name), "--log-dir", str(work / f"{name}-logs"),
           *extra]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=580)
    return time.monotonic() - t0, done.returncode, done.stdout[-1500:] + done.stderr[-1500:]


def fingerprint(folder: Path) -> dict[str, list]:
    found = {}
    for domain in ("retail", "airline"):
        for s in json.loads((folder / f"{domain}.json").read_text())["simulations"]:
            found[f"{domain}/{s['task_id']}"] = [s["reward_info"]["reward"], len(s["messages"]),
                                                 s["termination_reason"]]
    return found


def main() -> None:
    work, out, counts = Path(sys.argv[1]), Path(sys.argv[2]), [int(x) for x in sys.argv[3:]]
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STANDIN_QUIET": "1", "STANDIN_FAIL_TASKS": FAILED}
    standins = [subprocess.Popen([sys.executable, str(ROOT / "tests/standin/standin_server.py"), "--model", "standin",
                                  "--host", "127.0.0.1", "--port", str(p)], env=env, start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in PORTS]
    try:
        while not all(serves(endpoint_url("127.0.0.1", p), "standin") for p in PORTS):
            time.sleep(0.2)
        write_model_config(work / "mc.json", {"standin": [endpoint_url("127.0.0.1", p) for p in PORTS]})
        warm = launcher(work, "warm", 1, "--num-tasks", "4", "--max-concurrency", "8")
        runs = []
        for n in counts:
            wall, rc, tail = launcher(work, f"w{n}", n, "--max-concurrency", "64")
            summary = json.loads((work / f"w{n}" / "summary.json").read_text())
            runs.append({"workers": n, "wall_s": round(wall, 1), "rc": rc,
                         "evaluation_s": summary["overall"]["wall_time_s"],
                         "simulations": summary["overall"]["simulations"],
                         "avg_reward": summary["overall"]["avg_reward"],
                         "llm_calls": sum(len([m for m in s["messages"] if m["role"] in ("assistant", "user")])
                                          for d in ("retail", "airline")
                                          for s in json.loads((work / f"w{n}/{d}.json").read_text())["simulations"]),
                         "peak_in_flight": summary["concurrency"]["peak_in_flight"]})
            print(json.dumps(runs[-1]), flush=True)
            if rc:
                print(tail)
        base = fingerprint(work / f"w{counts[0]}")
        same = {n: fingerprint(work / f"w{n}") == base for n in counts}
        one = next(r for r in runs if r["workers"] == counts[0])
        for r in runs:
            r["speedup_vs_first"] = round(one["wall_s"] / r["wall_s"], 2)
        result = {"machine": {"cpus": os.cpu_count()}, "warm_up_s": round(warm[0], 1), "standin_servers": len(PORTS),
                  "runs": runs, "same_simulations_as_first": same, "commit_tree": str(ROOT)}
        out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        for p in standins:
            os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
