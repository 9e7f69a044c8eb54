#!/usr/bin/env python3
"""Figures of the GPU run (benchmarks/gpu_workers): scores, tool calls, failures, tokens, server load, and
the wall time against its lower bound, for run_local.py and for stock `tau2 run` on the same server.

    python benchmarks/gpu_workers/scripts/analyze.py EVAL_DIR PLAIN_DIR > benchmarks/gpu_workers/results_eval.json

EVAL_DIR holds run_local's out/{retail,airline}.json (from device/eval_runlocal.tgz), PLAIN_DIR tau2's
{retail,airline}.json (device/plain.tgz); the metrics CSVs and load.json are read from device/.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE.parents[1]))
from tau2_run_local.scoring import unparsed_tool_calls  # noqa: E402  (the checkout's package, on sys.path above)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def domain_figures(path: Path) -> dict:
    doc = json.loads(path.read_text())
    sims = doc["simulations"]
    rewards = [s["reward_info"]["reward"] if s.get("reward_info") else 0.0 for s in sims]
    calls = Counter()
    tool_errors = 0
    tokens = Counter()
    llm_calls, serial = [], []  # per simulation: LLM calls; (calls, completion tokens) in its own order
    for s in sims:
        n = made = 0
        for m in s["messages"]:
            if m["role"] in ("assistant", "user") and m.get("usage"):
                tokens[m["role"]] += m["usage"].get("completion_tokens", 0)
                made += m["usage"].get("completion_tokens", 0)
                n += 1
            if m["role"] == "assistant":
                calls["tool_calls"] += len(m.get("tool_calls") or [])
            if m["role"] == "tool" and m.get("error"):
                tool_errors += 1
        llm_calls.append(n)
        serial.append((n, made))
    unparsed = unparsed_tool_calls(
        type("S", (), {"messages": [type("M", (), m) for m in s["messages"]]}) for s in sims).total()
    durations = [s["duration"] for s in sims]
    starts, ends = [stamp(s["start_time"]) for s in sims], [stamp(s["end_time"]) for s in sims]
    return {
        "simulations": len(sims),
        "avg_reward": round(sum(rewards) / len(rewards), 4),
        "pass^1": round(sum(1 for r in rewards if r >= 1 - 1e-6) / len(rewards), 4),
        "termination_reasons": dict(Counter(s["termination_reason"] for s in sims)),
        "tool_calls": calls["tool_calls"], "tool_errors": tool_errors, "tool_calls_left_in_text": unparsed,
        "completion_tokens": {"agent": tokens["assistant"], "user": tokens["user"]},
        "llm_calls": sum(llm_calls), "llm_calls_per_simulation_max": max(llm_calls),
        "simulation_s": {"median": round(statistics.median(durations), 1), "max": round(max(durations), 1)},
        "first_start": min(starts), "last_end": max(ends), "serial": serial,
    }


def load_figures(path: Path, since: float, until: float) -> dict:
    rows = [r for r in csv.DictReader(path.open()) if since <= float(r["t"]) <= until]
    t = [float(r["t"]) for r in rows]
    gen, prompt = [float(r["gen_tokens"]) for r in rows], [float(r["prompt_tokens"]) for r in rows]
    span = t[-1] - t[0]
    return {
        "samples": len(rows), "span_s": round(span, 1),
        "requests_running": {"mean": round(statistics.mean(int(r["running"]) for r in rows), 1),
                             "max": max(int(r["running"]) for r in rows)},
        "requests_waiting_max": max(int(r["waiting"]) for r in rows),
        "kv_cache_use_max": max(float(r["kv_use"]) for r in rows),
        "output_tok_s": round((gen[-1] - gen[0]) / span), "prompt_tok_s": round((prompt[-1] - prompt[0]) / span),
        "gpu_util_mean_pct": round(statistics.mean(int(r["gpu_util"] or 0) for r in rows), 1),
    }


def client(name: str, folder: Path, metrics: Path, wall_s: float, load: dict) -> dict:
    domains = {d: domain_figures(folder / f"{d}.json") for d in ("retail", "airline")}
    since = min(d["first_start"] for d in domains.values())
    until = max(d["last_end"] for d in domains.values())
    generated = sum(sum(d["completion_tokens"].values()) for d in domains.values())
    saturated = max(level["output_tok_s"] for level in load["levels"])
    single = load["single_request"]
    # the longest simulation alone: each of its LLM calls at the unloaded server's speed (time to first token
    # for a ~4k-token prompt, then its own tokens at single-stream decode speed)
    longest_serial = max(n * single["ttft_s"] + made / single["decode_tok_s"]
                         for d in domains.values() for n, made in d["serial"])
    bound = max(longest_serial, generated / saturated)
    for d in domains.values():
        d.pop("first_start"), d.pop("last_end"), d.pop("serial")
    return {
        "client": name, "domains": domains, "process_wall_s": wall_s,
        "simulations_span_s": round(until - since, 1),
        "server_during_simulations": load_figures(metrics, since, until),
        "generated_tokens": generated, "saturated_output_tok_s": saturated,
        "lower_bound_s": {"longest_simulation_serial_s": round(longest_serial, 1),
                          "generated_over_saturated_s": round(generated / saturated, 1), "bound_s": round(bound, 1)},
        "wall_over_bound": round(wall_s / bound, 1),
    }


def main() -> None:
    eval_dir, plain_dir = Path(sys.argv[1]), Path(sys.argv[2])
    dev = HERE / "device"
    load = json.loads((dev / "load.json").read_text())
    stdout = (dev / "eval_runlocal_stdout.txt").read_text()
    runlocal_wall = float(stdout.rsplit("wall=", 1)[1].split("s", 1)[0])
    plain_wall = float((plain_dir / "wall.txt").read_text().rsplit("wall=", 1)[1].split("s", 1)[0])
    print(json.dumps({
        "run_local": client("run_local.py --skip-server-start", eval_dir / "out", dev / "metrics_runlocal.csv",
                            runlocal_wall, load),
        "tau2_run": client("tau2 run (retail and airline at once)", plain_dir, dev / "metrics_plain.csv",
                           plain_wall, load),
        "load": load,
    }, indent=2))


if __name__ == "__main__":
    main()
