#!/usr/bin/env python3
"""Parallel-domains benchmark: run_local.py's default (one domain after another) against
--parallel-domains (all domains' simulations in one pool), same server, same --max-concurrency.

One stand-in server (tests/standin) is started here that serves at most STANDIN_MAX_CONCURRENT = 8
completions at a time and sleeps STANDIN_TOKEN_DELAY seconds per completion token, like a server
with 8 batch slots. The launcher runs against it with --skip-server-start:

  python run_local.py --skip-server-start --model-config-path <file listing that server>
      --user-llm standin --domains retail telecom airline --num-tasks 8 --max-steps 60
      --max-concurrency 8 [--parallel-domains]

Figure: the wall time of the whole command, 3 runs of each mode, interleaved, median reported; the
launcher's own wall time for the simulations (summary.json, without start-up) is shown next to it.
Two server speeds: 0.005 s/token (the brief's setting) and 0.02 s/token (a slower server), since
which side dominates, the server or the client's CPU, decides what running domains together gains.
The stand-in's user makes the user's gold tool calls of the task its scenario names (the first with that
scenario: most telecom tasks share theirs, so most replay another task's actions, reward mostly 0); the
recorded figures are from before it did, when telecom tasks ended after a few turns. Both modes must give
every task the same reward.

--quick: 3 tasks per domain, one speed (0.005), 1 run of each mode.

Usage: .venv/bin/python benchmarks/parallel_domains/run.py [--quick]
Writes benchmarks/parallel_domains/results.json (--quick: results-quick.json) and prints a table.
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
LAUNCHER = ROOT / "run_local.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import launcher_version, machine, start_standin, stop_group, timed  # noqa: E402  (benchmarks/, on sys.path above)

DOMAINS = ["retail", "telecom", "airline"]
MAX_STEPS = 60
CONCURRENCY = 8
SERVER_SLOTS = 8

_running: list[subprocess.Popen] = []


def launcher_command(config: Path, tasks: int, out: Path, parallel: bool) -> list[str]:
    return [PY, str(LAUNCHER), "--skip-server-start", "--model-config-path", str(config),
            "--user-llm", "standin", "--domains", *DOMAINS, "--num-tasks", str(tasks),
            "--max-steps", str(MAX_STEPS), "--max-concurrency", str(CONCURRENCY),
            *(["--parallel-domains"] if parallel else []),
            "--output-dir", str(out / "out"), "--log-dir", str(out / "logs")]


def run_once(argv: list[str], out: Path, env: dict[str, str]) -> dict:
    """Wall seconds of the whole command, the launcher's own wall seconds, and the rewards."""
    out.mkdir(parents=True)
    took = timed(argv, out / "launcher.log", env, _running)
    summary = json.loads((out / "out" / "summary.json").read_text())
    rewards = {}
    for domain in DOMAINS:
        doc = json.loads((out / "out" / f"{domain}.json").read_text())
        rewards.update({f"{domain}/{s['task_id']}": (s.get("reward_info") or {}).get("reward", 0.0)
                        for s in doc["simulations"]})
    return {"wall_s": round(took, 2), "launcher_wall_s": summary["overall"]["wall_time_s"],
            "domain_wall_s": {d: v["wall_time_s"] for d, v in summary["domains"].items()}, "rewards": rewards}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 tasks per domain, one speed, 1 run")
    opts = parser.parse_args()
    tasks, repeats, delays = (3, 1, [0.005]) if opts.quick else (8, 3, [0.005, 0.02])
    work = Path(tempfile.mkdtemp(prefix="bench_parallel_"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PYTHONPATH", None)
    started = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    version_at_start = launcher_version()

    def on_signal(signum: int, _frame: object) -> None:
        for proc in list(_running):
            stop_group(proc)
        os._exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    settings = []
    try:
        for delay in delays:
            server, port = start_standin(work / f"standin_{delay}.log", max_concurrent=str(SERVER_SLOTS),
                                         token_delay=str(delay))
            _running.append(server)  # stopped on Ctrl-C too
            config = work / f"config_{port}.json"
            config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
            runs: dict[str, list[dict]] = {"sequential": [], "parallel": []}
            try:
                for rep in range(repeats):
                    order = ("sequential", "parallel") if rep % 2 == 0 else ("parallel", "sequential")
                    for mode in order:
                        out = work / f"d{delay}_{mode}_{rep}"
                        r = run_once(launcher_command(config, tasks, out, mode == "parallel"), out, env)
                        runs[mode].append(r)
                        print(f"  {delay} s/token  run {rep + 1}/{repeats} {mode:10} {r['wall_s']:6.1f} s "
                              f"(launcher's own {r['launcher_wall_s']:.1f} s; per domain {r['domain_wall_s']})",
                              flush=True)
            finally:
                stop_group(server)
                _running.remove(server)
            med = {mode: statistics.median(r["wall_s"] for r in rs) for mode, rs in runs.items()}
            own = {mode: statistics.median(r["launcher_wall_s"] for r in rs) for mode, rs in runs.items()}
            reference = runs["sequential"][0]["rewards"]
            settings.append({
                "token_delay_s": delay, "server_slots": SERVER_SLOTS,
                "wall_s": {m: [r["wall_s"] for r in rs] for m, rs in runs.items()},
                "launcher_wall_s": {m: [r["launcher_wall_s"] for r in rs] for m, rs in runs.items()},
                "domain_wall_s": {m: [r["domain_wall_s"] for r in rs] for m, rs in runs.items()},
                "median_wall_s": med, "median_launcher_wall_s": own,
                "speedup_sequential_over_parallel": round(med["sequential"] / med["parallel"], 3),
                "speedup_launcher_own": round(own["sequential"] / own["parallel"], 3),
                "rewards_identical": all(r["rewards"] == reference for rs in runs.values() for r in rs),
                "avg_reward": {d: round(statistics.mean(v for k, v in reference.items() if k.startswith(d + "/")), 3)
                               for d in DOMAINS},
            })
    finally:
        for proc in list(_running):
            stop_group(proc)

    print()
    print(f"{'server speed':14} {'mode':11} {'runs, whole command (s)':26} {'median':>8} {'launcher own':>13}")
    for s in settings:
        for mode in ("sequential", "parallel"):
            print(f"{str(s['token_delay_s']) + ' s/token':14} {mode:11} "
                  f"{', '.join(f'{t:.1f}' for t in s['wall_s'][mode]):26} {s['median_wall_s'][mode]:7.1f}s "
                  f"{s['median_launcher_wall_s'][mode]:12.1f}s")
        print(f"{'':14} sequential / parallel = {s['speedup_sequential_over_parallel']:.2f}x "
              f"(launcher's own: {s['speedup_launcher_own']:.2f}x); rewards identical: {s['rewards_identical']}; "
              f"avg reward {s['avg_reward']}")
    doc = {
        "benchmark": "parallel_domains", "mode": "quick" if opts.quick else "full", "started_at": started,
        "launcher": version_at_start | {"run_local_py_unchanged_during_run":
                                         launcher_version()["run_local_py_sha256"]
                                         == version_at_start["run_local_py_sha256"]},
        "machine": machine(),
        "command": shlex.join([".venv/bin/python", "benchmarks/parallel_domains/run.py", *sys.argv[1:]]),
        "setup": {"domains": DOMAINS, "num_tasks_per_domain": tasks, "max_steps": MAX_STEPS,
                  "max_concurrency": CONCURRENCY, "server": f"one stand-in, STANDIN_MAX_CONCURRENT={SERVER_SLOTS}",
                  "repeats": repeats, "order": "interleaved, alternating which goes first"},
        "launcher_command": shlex.join(launcher_command(Path("<one-endpoint file>"), tasks, Path("<scratch>"), False))
                            + " [--parallel-domains]",
        "settings": settings,
    }
    (HERE / ("results-quick.json" if opts.quick else "results.json")).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {HERE / ('results-quick.json' if opts.quick else 'results.json')}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(s["rewards_identical"] for s in settings) else 1


if __name__ == "__main__":
    sys.exit(main())
