#!/usr/bin/env python3
"""Evaluation overhead benchmark: run_local.py against plain `tau2 run`, same server, same tasks.

One stand-in server (tests/standin, no delays: it answers at once) is started here and warmed up (it
loads τ²-bench's task sets on its first request). Both commands run the same simulations against it:

  stock     tau2 run --domain retail --num-tasks N --max-steps 60 --max-concurrency K
                --agent-llm hosted_vllm/standin --agent-llm-args '{"api_base": URL, "temperature": 0}'
                --user-llm  hosted_vllm/standin --user-llm-args  '{"api_base": URL, "temperature": 0}'
                --save-to <fresh name> --results-dir <scratch>
  launcher  python run_local.py --skip-server-start --model-config-path <file listing that one server>
                --user-llm standin --domains retail --num-tasks N --max-steps 60 --max-concurrency K

The figure is the wall time of the whole command (both pay Python start-up and the τ²-bench import),
3 runs of each, interleaved (stock first, then launcher first, ...), median reported; overhead =
median(launcher) / median(stock) - 1, which must be at most 5%. Both must give every task the same
reward: a few tasks are made to fail (STANDIN_FAIL_TASKS) so that rewards are not all 1.

--quick: 10 tasks, 1 run each (a smoke test; the 5% bound is not meaningful there).

Usage: .venv/bin/python benchmarks/eval_overhead/run.py [--quick]
Writes benchmarks/eval_overhead/results.json (--quick: results-quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
TAU2 = str(Path(PY).parent / "tau2")
LAUNCHER = ROOT / "run_local.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import launcher_version, machine, start_standin, stop_group, timed  # noqa: E402  (benchmarks/, on sys.path above)

DOMAIN = "retail"
MAX_STEPS = 60
CONCURRENCY = 8
FAIL_TASKS = ["retail/3", "retail/8", "retail/15", "retail/22", "retail/31"]  # the stand-in refuses these
OVERHEAD_LIMIT = 0.05


def stock_command(port: int, tasks: int, save_to: str, results_dir: Path) -> list[str]:
    llm_args = json.dumps({"api_base": f"http://127.0.0.1:{port}/v1", "temperature": 0})
    return [TAU2, "run", "--domain", DOMAIN, "--num-tasks", str(tasks), "--max-steps", str(MAX_STEPS),
            "--agent-llm", "hosted_vllm/standin", "--agent-llm-args", llm_args,
            "--user-llm", "hosted_vllm/standin", "--user-llm-args", llm_args,
            "--max-concurrency", str(CONCURRENCY), "--save-to", save_to, "--results-dir", str(results_dir)]


def launcher_command(config: Path, tasks: int, out: Path) -> list[str]:
    return [PY, str(LAUNCHER), "--skip-server-start", "--model-config-path", str(config),
            "--user-llm", "standin", "--domains", DOMAIN, "--num-tasks", str(tasks),
            "--max-steps", str(MAX_STEPS), "--max-concurrency", str(CONCURRENCY),
            "--output-dir", str(out / "out"), "--log-dir", str(out / "logs")]


_running: list[subprocess.Popen] = []


def rewards(results_file: Path) -> dict[str, float]:
    doc = json.loads(results_file.read_text())
    return {s["task_id"]: (s.get("reward_info") or {}).get("reward", 0.0) for s in doc["simulations"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 tasks, 1 run each")
    opts = parser.parse_args()
    tasks, repeats = (10, 1) if opts.quick else (40, 3)
    work = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PYTHONPATH", None)
    started = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    version_at_start = launcher_version()

    def on_signal(signum: int, _frame: object) -> None:
        for proc in [*_running, server]:
            stop_group(proc)
        os._exit(130)

    server, port = start_standin(work / "standin.log", fail_tasks=",".join(FAIL_TASKS))
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    config = work / "model_config_local.json"
    config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}, indent=2))
    times: dict[str, list[float]] = {"stock": [], "launcher": []}
    got: dict[str, list[dict[str, float]]] = {"stock": [], "launcher": []}
    try:
        for rep in range(repeats):
            order = ("stock", "launcher") if rep % 2 == 0 else ("launcher", "stock")
            for kind in order:
                name = f"{kind}_rep{rep}_{int(time.time())}"  # fresh every time
                if kind == "stock":
                    argv = stock_command(port, tasks, name, work / "stock")
                    result = work / "stock" / f"{name}.json"
                else:
                    argv = launcher_command(config, tasks, work / name)
                    result = work / name / "out" / f"{DOMAIN}.json"
                took = timed(argv, work / f"{name}.log", env, _running)
                times[kind].append(round(took, 2))
                got[kind].append(rewards(result))
                print(f"  run {rep + 1}/{repeats} {kind:8} {took:6.1f} s  avg reward "
                      f"{statistics.mean(got[kind][-1].values()):.3f} over {len(got[kind][-1])} tasks", flush=True)
    finally:
        stop_group(server)
        for proc in list(_running):
            stop_group(proc)

    reference = got["stock"][0]
    same = all(r == reference for runs in got.values() for r in runs) and len(reference) == tasks
    med = {kind: statistics.median(ts) for kind, ts in times.items()}
    overhead = med["launcher"] / med["stock"] - 1
    print()
    print(f"{'command':10} {'runs (s)':30} {'median (s)':>11}")
    for kind in ("stock", "launcher"):
        print(f"{kind:10} {', '.join(f'{t:.1f}' for t in times[kind]):30} {med[kind]:11.1f}")
    print(f"\nlauncher / stock = {med['launcher'] / med['stock']:.3f}  (overhead {overhead:+.1%}, "
          f"limit +{OVERHEAD_LIMIT:.0%}: {'PASS' if overhead <= OVERHEAD_LIMIT else 'FAIL'})")
    print(f"rewards identical in every run: {same} "
          f"({sum(v == 1.0 for v in reference.values())} of {len(reference)} tasks solved)")
    doc = {
        "benchmark": "eval_overhead", "mode": "quick" if opts.quick else "full", "started_at": started,
        "launcher": version_at_start | {"run_local_py_unchanged_during_run":
                                         launcher_version()["run_local_py_sha256"]
                                         == version_at_start["run_local_py_sha256"]},
        "machine": machine(),
        "command": shlex.join([".venv/bin/python", "benchmarks/eval_overhead/run.py", *sys.argv[1:]]),
        "setup": {"domain": DOMAIN, "num_tasks": tasks, "max_steps": MAX_STEPS, "max_concurrency": CONCURRENCY,
                  "server": "one stand-in, no delays, STANDIN_FAIL_TASKS=" + ",".join(FAIL_TASKS),
                  "repeats": repeats, "order": "interleaved, alternating which goes first"},
        "commands": {"stock": shlex.join(stock_command(port, tasks, "<fresh name>", Path("<scratch>"))),
                     "launcher": shlex.join(launcher_command(Path("<one-endpoint file>"), tasks, Path("<scratch>")))},
        "wall_s": times, "median_s": med, "ratio_launcher_over_stock": round(med["launcher"] / med["stock"], 3),
        "overhead": round(overhead, 4), "within_limit": overhead <= OVERHEAD_LIMIT,
        "rewards_identical": same, "rewards": reference,
    }
    (HERE / ("results-quick.json" if opts.quick else "results.json")).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {HERE / ('results-quick.json' if opts.quick else 'results.json')}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if same and (opts.quick or overhead <= OVERHEAD_LIMIT) else 1


if __name__ == "__main__":
    sys.exit(main())
