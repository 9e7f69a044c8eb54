#!/usr/bin/env python3
"""Lean-client benchmark (issue 17): the client's CPU per simulation, the launcher as it was before the
lean client (BEFORE, extracted with `git archive`) against this tree's, side by side in one run.

One stand-in server (tests/standin, no delays: it answers at once) is started here and warmed up. Each
launcher runs against it in the launcher's own process (--workers 1, one simulation at a time):

  python run_local.py --skip-server-start --model-config-path <file listing that server>
      --user-llm standin --domains D --num-tasks N --max-steps 60 --max-concurrency 1 --workers 1

The figure is the CPU time (user + system, from wait4) of the launcher process: it holds the
simulations, the live report and the start-up; the stand-in is another process. Each domain runs at two
sizes (N_SMALL, N_LARGE tasks) and the client's CPU per simulation is the difference over the extra
simulations, so start-up cancels out. Runs interleaved (before first, then after first, ...), median of
the per-run figures. Both launchers must give every task the same reward.

It also times, in this process, the pieces the lean client changed: a domain's database copied four ways,
every tool's schema built by τ²-bench and from the cache, and the live report's plots drawn once.

--quick: 1 and 3 tasks, one run of each.

Usage: .venv/bin/python benchmarks/lean_client/run.py [--quick] [--before REV]
Writes benchmarks/lean_client/results.json (--quick: results-quick.json) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import launcher_version, machine, start_standin, stop_group  # noqa: E402  (benchmarks/, on sys.path above)

BEFORE = "992ad7b"  # the launcher before the lean client: main at 1506fda, plus the request recording
DOMAINS = ("retail", "airline")
MAX_STEPS = 60


def launcher_command(tree: Path, config: Path, domain: str, tasks: int | str, out: Path) -> list[str]:
    return [PY, str(tree / "run_local.py"), "--skip-server-start", "--model-config-path", str(config),
            "--user-llm", "standin", "--domains", domain, "--num-tasks", str(tasks), "--max-steps", str(MAX_STEPS),
            "--max-concurrency", "1", "--workers", "1", "--output-dir", str(out / "out"),
            "--log-dir", str(out / "logs")]


def cpu_and_wall(argv: list[str], log: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(CPU seconds of the process, user + system; wall seconds; its peak memory, MiB) of the whole command."""
    with open(log, "w") as out:
        began = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=ROOT, start_new_session=True)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[:4])} ... exited with {proc.returncode}; see {log}")
    return usage.ru_utime + usage.ru_stime, took, usage.ru_maxrss // 1024


def rewards(out: Path, domain: str) -> dict[str, float]:
    doc = json.loads((out / "out" / f"{domain}.json").read_text())
    return {s["task_id"]: s["reward_info"]["reward"] for s in doc["simulations"]}


def best_ms(f, n: int = 5) -> float:
    f()
    best = float("inf")
    for _ in range(n):
        began = time.process_time()
        f()
        best = min(best, time.process_time() - began)
    return round(best * 1000, 1)


def domain_pieces(registry, domain: str, stock_load, stock_schema) -> tuple[dict, dict]:
    """(a domain's database copied four ways, its tools' schemas built by τ²-bench and from the cache), ms."""
    from importlib import import_module

    from tau2.utils import load_file

    env = registry.get_env_constructor(domain)()
    db, path = env.tools.db, getattr(import_module(f"tau2.domains.{domain}.utils"), f"{domain.upper()}_DB_PATH")
    cls, text = type(db), json.dumps(load_file(path))
    data = pickle.dumps(stock_load(cls, path), protocol=pickle.HIGHEST_PROTOCOL)
    copies = {"stock DB.load (file, validated)": best_ms(lambda: stock_load(cls, path)),
              "model_validate_json of the file as JSON text": best_ms(lambda: cls.model_validate_json(text)),
              "model_copy(deep=True)": best_ms(lambda: db.model_copy(deep=True)),
              "pickle.loads (lean.load_once)": best_ms(lambda: pickle.loads(data))}
    tools = [*env.get_tools(), *(env.get_user_tools() if env.user_tools else [])]
    schemas = {"tools": len(tools), "stock, every call": best_ms(lambda: [stock_schema(t) for t in tools]),
               "cached (lean.schema_once)": best_ms(lambda: [t.openai_schema for t in tools])}
    return copies, schemas


def litellm_pieces(port: int) -> dict:
    """litellm's CPU per call against the instant stand-in, next to a plain HTTP post of the same body and
    the parts of its path that could be cached (ms; retail agent requests as recorded in tests/golden)."""
    import httpx
    import litellm
    from litellm.utils import get_optional_params
    from tau2.utils.llm_utils import get_response_cost

    url = f"http://127.0.0.1:{port}/v1"
    bodies = [json.loads(line) for line in (ROOT / "tests" / "golden" / "requests.jsonl").read_text().splitlines()]
    agent = [b for b in bodies if b["messages"][0]["content"].startswith("<instructions>")
             and len(b.get("tools") or []) == 15][:6]

    def via_litellm() -> Any:
        return [litellm.completion(model="hosted_vllm/standin", api_base=url, messages=b["messages"], tools=b["tools"],
                                   tool_choice=b["tool_choice"], temperature=0, seed=b["seed"], num_retries=0,
                                   max_retries=0, timeout=60) for b in agent]

    client = httpx.Client()
    reply = via_litellm()[0]

    def optional_params() -> Any:
        return get_optional_params(model="standin", custom_llm_provider="hosted_vllm", tools=agent[0]["tools"],
                                   tool_choice="auto", temperature=0, seed=1)

    return {"litellm.completion": round(best_ms(via_litellm) / len(agent), 2),
            "httpx post of the same body": round(best_ms(
                lambda: [client.post(f"{url}/chat/completions", json=b).json() for b in agent]) / len(agent), 2),
            "get_optional_params": round(best_ms(lambda: [optional_params() for _ in range(50)]) / 50, 2),
            "tau2's get_response_cost":
                round(best_ms(lambda: [get_response_cost(reply) for _ in range(50)]) / 50, 2)}


def pieces(work: Path, summary_file: Path, port: int) -> dict:
    """The pieces the lean client changed, timed in this process (best of 5, CPU ms)."""
    sys.path.insert(0, str(ROOT))
    from tau2_run_local.tau2_loader import load_tau2

    registry = load_tau2(work / "tau2.log").registry
    from tau2.environment.db import DB
    from tau2.environment.tool import Tool

    from tau2_run_local.report_page import plots

    stock_load, stock_schema = DB.load.__func__.__wrapped__, Tool.openai_schema.fget.__wrapped__
    found: dict = {"database_copy_ms": {}, "tool_schemas_ms": {}}
    for domain in ("mock", "retail", "airline", "telecom"):
        found["database_copy_ms"][domain], found["tool_schemas_ms"][domain] = domain_pieces(
            registry, domain, stock_load, stock_schema)
    summary = json.loads(summary_file.read_text())
    found["live_report_plots_drawn_once_ms"] = best_ms(lambda: plots(summary), 3)
    found["litellm_per_call_ms"] = litellm_pieces(port)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 and 3 tasks, one run each")
    parser.add_argument("--before", default=BEFORE, help=f"the launcher to compare with (default: {BEFORE})")
    opts = parser.parse_args()
    sizes, repeats = ((1, 3), 1) if opts.quick else ((2, 12), 3)
    work = Path(tempfile.mkdtemp(prefix="bench_lean_"))
    trees = {"before": work / "before", "after": ROOT}
    trees["before"].mkdir()
    archive = subprocess.run(["git", "archive", opts.before, "run_local.py", "tau2_run_local"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(trees["before"])], input=archive, check=True)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_API_KEY": ""}
    env.pop("PYTHONPATH", None)
    for kind, tree in trees.items():  # each launcher imports its own package (its folder comes first)
        where = subprocess.run([PY, "-c", "import tau2_run_local; print(tau2_run_local.__file__)"], cwd=tree,
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert where.startswith(str(tree)), (kind, where)
    started = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    server, port = start_standin(work / "standin.log")
    config = work / "model_config_local.json"
    config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}, indent=2))
    runs: dict = {kind: {d: {str(n): [] for n in sizes} for d in DOMAINS} for kind in trees}
    got: dict = {kind: {} for kind in trees}
    try:
        for rep in range(repeats):
            order = ("before", "after") if rep % 2 == 0 else ("after", "before")
            for domain in DOMAINS:
                for n in sizes:
                    for kind in order:
                        out = work / f"{kind}_{domain}_{n}_{rep}"
                        cpu, wall, rss = cpu_and_wall(launcher_command(trees[kind], config, domain, n, out),
                                                      work / f"{out.name}.log", env)
                        runs[kind][domain][str(n)].append({"cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                                                           "max_rss_mib": rss})
                        got[kind].setdefault(domain, {}).update(rewards(out, domain))
                        print(f"  run {rep + 1}/{repeats} {kind:6} {domain:8} {n:3} tasks  cpu {cpu:6.2f} s  "
                              f"wall {wall:6.2f} s  peak memory {rss} MiB", flush=True)
        summary_file = work / f"after_{DOMAINS[0]}_{sizes[1]}_0" / "out" / "summary.json"
        measured = pieces(work, summary_file, port)
    finally:
        stop_group(server)

    small, large = (str(n) for n in sizes)
    per_sim = {kind: {d: round(statistics.median(
        (b["cpu_s"] - a["cpu_s"]) / (sizes[1] - sizes[0]) for a, b in zip(r[small], r[large], strict=True)), 3)
        for d, r in by_domain.items()} for kind, by_domain in runs.items()}
    same = got["before"] == got["after"]
    print(f"\n{'domain':8} {'CPU per simulation, before':>27} {'after':>8} {'after/before':>13}")
    for d in DOMAINS:
        print(f"{d:8} {per_sim['before'][d]:25.3f} s {per_sim['after'][d]:6.3f} s "
              f"{per_sim['after'][d] / per_sim['before'][d]:13.2f}")
    print(f"rewards identical: {same}")
    print(json.dumps(measured, indent=1))
    doc = {
        "benchmark": "lean_client", "mode": "quick" if opts.quick else "full", "started_at": started,
        "launcher": launcher_version() | {"before": opts.before}, "machine": machine(),
        "command": shlex.join([".venv/bin/python", "benchmarks/lean_client/run.py", *sys.argv[1:]]),
        "setup": {"domains": DOMAINS, "sizes": sizes, "max_steps": MAX_STEPS, "repeats": repeats,
                  "server": "one stand-in, no delays", "order": "interleaved, alternating which goes first",
                  "command": shlex.join(["python", *launcher_command(Path("<tree>"), Path("<one-endpoint file>"),
                                                                      "<domain>", "<N>", Path("<scratch>"))[1:]])},
        "runs": runs, "cpu_per_simulation_s": per_sim, "rewards_identical": same, "rewards": got["after"],
        "pieces": measured,
    }
    name = "results-quick.json" if opts.quick else "results.json"
    (HERE / name).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {HERE / name}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
