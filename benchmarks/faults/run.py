#!/usr/bin/env python3
"""A hosted user simulator under rate limits and an outage: no fault may become a score.

Two stand-in servers (tests/standin), started here: the agent's (healthy) and a "hosted user API" that
fails the machinery's way, on user-simulator calls only:
  * it refuses 25% of calls at random with HTTP 429 and `Retry-After: 1` (STANDIN_429_RATE=0.25),
  * and every call beyond 1 in any second (STANDIN_RATE_LIMIT=1), as a rate-limited API does,
  * and answers HTTP 500 to everything for 10 s (STANDIN_FAULT_WINDOW=5:15:500, from 5 s after the
    first call).
The same 40-task retail run goes through run_local.py twice, each against a fresh pair of servers:
  unpaced   --max-concurrency 16 (the user simulator's calls unpaced, as many as simulations in flight)
  paced     the same, plus --user-max-concurrency 2 --user-max-rpm 55 (under the API's limit)
Reported per run: wall time, user calls made and refused (429) or failed (500), simulations scored, and
the check that every scored simulation has the stand-in agent's known reward (none scored 0 by a fault).

--quick: 12 tasks (a smoke test).

Usage: .venv/bin/python benchmarks/faults/run.py [--quick]
Writes benchmarks/faults/results.json (--quick: results-quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "standin"))
from common import launcher_version, machine, start_standin, stop_group, timed  # noqa: E402  (benchmarks/, on sys.path above)
from known_rewards import expected_reward  # noqa: E402  (tests/standin/, on sys.path above)

DOMAIN, MAX_STEPS, CONCURRENCY = "retail", 60, 16
USER_API_FAULTS = {"fault_role": "user", "429_rate": "0.25", "rate_limit": "1", "retry_after": "1",
                   "fault_window": "5:15:500", "fault_seed": "7"}
SETTINGS = {"unpaced": [], "paced": ["--user-max-concurrency", "2", "--user-max-rpm", "55"]}


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def one_run(name: str, extra: list[str], tasks: int, scratch: Path, running: list) -> dict:
    agent, agent_port = start_standin(scratch / f"{name}-agent.log")
    user, user_port = start_standin(scratch / f"{name}-user.log", **USER_API_FAULTS)
    try:
        warm = stats(user_port)["chat_requests"]  # the warm-up call start_standin made
        config = scratch / f"{name}-endpoints.json"
        config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(agent_port)}]}))
        out = scratch / f"{name}-out"
        argv = [sys.executable, str(ROOT / "run_local.py"), "--skip-server-start", "--model-config-path", str(config),
                "--user-llm", "standin", "--user-api-base", f"http://127.0.0.1:{user_port}/v1",
                "--domains", DOMAIN, "--num-tasks", str(tasks), "--max-steps", str(MAX_STEPS),
                "--max-concurrency", str(CONCURRENCY), "--output-dir", str(out),
                "--log-dir", str(scratch / f"{name}-logs"), *extra]
        wall = timed(argv, scratch / f"{name}-launcher.log", {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                     running, ok=(0, 1))  # 1: some simulations left undone, which is reported below
        refused = stats(user_port)
        from tau2.data_model.simulation import Results
        sims = Results.load(out / f"{DOMAIN}.json").simulations
        wrong = [s.task_id for s in sims
                 if s.reward_info.reward != expected_reward(DOMAIN, s.task_id, max_steps=MAX_STEPS)]
        summary = json.loads((out / "summary.json").read_text())["domains"][DOMAIN]
        return {"wall_s": round(wall, 1), "user_calls_answered": refused["chat_requests"] - warm,
                "user_calls_refused_429": refused["refused_429"], "user_calls_failed_500": refused["errors_500"],
                "simulations_scored": len(sims), "simulations_expected": tasks,
                "rewards_as_known": not wrong, "wrong_rewards": wrong,
                "scored_zero_by_a_fault": summary["termination_reasons"].get("agent_error", 0),
                "retried_calls": summary["failures"]["retried_calls"],
                "left_undone": summary["not_scored"],
                "avg_reward": summary["avg_reward"], "command": argv}
    finally:
        stop_group(agent)
        stop_group(user)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tasks = 12 if args.quick else 40
    running: list = []
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        try:
            for name, extra in SETTINGS.items():
                results[name] = one_run(name, extra, tasks, Path(tmp), running)
        finally:
            for proc in running:
                stop_group(proc)
    print(f"{'run':8} {'wall':>7} {'answered':>9} {'429':>5} {'500':>5} {'scored':>7} {'known':>6} {'retried':>8}")
    for name, r in results.items():
        print(f"{name:8} {r['wall_s']:6.1f}s {r['user_calls_answered']:9} {r['user_calls_refused_429']:5} "
              f"{r['user_calls_failed_500']:5} {r['simulations_scored']:4}/{r['simulations_expected']:<2} "
              f"{str(r['rewards_as_known']):>6} {r['retried_calls']:8}")
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "tasks": tasks,
           "user_api_faults": USER_API_FAULTS, "settings": SETTINGS, "results": results,
           "launcher": launcher_version(), "machine": machine()}
    (HERE / ("results-quick.json" if args.quick else "results.json")).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
