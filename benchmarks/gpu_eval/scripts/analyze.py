"""python3 analyze.py DEVICE_DIR > results.json: every run's figures from what came back (summary.json, results,
/metrics samples, marks): the concurrency sweep, the client's round trip against the engine's time per call,
--deterministic's identity checks (two concurrencies; plain `tau2 run`), and the whole benchmark at 1 and 4 trials."""
import datetime
import io
import json
import statistics as st
import sys
import tarfile
from pathlib import Path


def members(tgz: Path) -> dict[str, bytes]:
    with tarfile.open(tgz) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def trajectories(raw: bytes) -> dict[tuple, tuple]:
    """(task, trial) -> (messages as role/content/tool calls, reward)."""
    out = {}
    for s in json.load(io.BytesIO(raw))["simulations"]:
        msgs = tuple((m.get("role"), m.get("content"), json.dumps(m.get("tool_calls"), sort_keys=True))
                     for m in s["messages"])
        out[(s["task_id"], s.get("trial", 0))] = (msgs, (s.get("reward_info") or {}).get("reward"))
    return out


def client_round_trips(raw: bytes) -> list[float]:
    """Seconds from a message to the next agent or user message: the model call as the client sees it."""
    t = lambda m: datetime.datetime.fromisoformat(m["timestamp"]).timestamp()  # noqa: E731
    out = []
    for s in json.load(io.BytesIO(raw))["simulations"]:
        m = s["messages"]
        out += [t(m[i]) - t(m[i - 1]) for i in range(1, len(m)) if m[i]["role"] in ("assistant", "user")]
    return out


def metrics_window(rows: list[dict], a: float, b: float) -> dict:
    w = [r for r in rows if a <= r["t"] <= b]
    f, last = w[0], w[-1]
    d = lambda k: last.get(k, 0) - f.get(k, 0)  # noqa: E731
    n = d("vllm:e2e_request_latency_seconds_count")
    per = {k: round(d(f"vllm:{m}_seconds_sum") / n, 3) for k, m in
           (("e2e_s", "e2e_request_latency"), ("engine_inference_s", "request_inference_time"),
            ("queue_s", "request_queue_time"), ("ttft_s", "time_to_first_token"))}
    util = [float(r["gpu_util"]) for r in w if r.get("gpu_util")]
    return {"requests": int(n), **per, "prompt_tokens": int(d("vllm:prompt_tokens_total")),
            "generation_tokens": int(d("vllm:generation_tokens_total")), "gpu_util_mean_pct": round(st.mean(util), 1),
            "running_max": int(max(r.get("vllm:num_requests_running", 0) for r in w)),
            "waiting_max": int(max(r.get("vllm:num_requests_waiting", 0) for r in w))}


def summary_of(raw: bytes) -> dict:
    s = json.loads(raw)
    c = s.get("concurrency", {})
    return {"overall_wall_time_s": s["overall"]["wall_time_s"],
            "domains": {k: {"simulations": v["simulations"], "avg_reward": round(v["avg_reward"], 4),
                            "wall_time_s": v["wall_time_s"]} for k, v in s["domains"].items()},
            "peak_in_flight": c.get("peak_in_flight"), "targets": [r["target"] for r in c.get("readings", [])]}


def main(dev: Path) -> dict:
    sweep = members(dev / "sweep_runs.tgz")
    rows = [json.loads(line) for line in (dev / "sweep_metrics.jsonl").read_text().splitlines()]
    marks: dict[str, dict] = {}
    for line in (dev / "sweep_marks.txt").read_text().splitlines():
        p = line.split()
        marks.setdefault(p[0], {})["start" if p[1] == "start" else "end"] = float(p[2] if p[1] == "start" else p[-1])
    runs = {}
    for label in ("adaptive", "c164", "c96", "c48", "adaptive2", "base20"):
        r = summary_of(sweep[f"{label}/out/summary.json"])
        r["server"] = metrics_window(rows, marks[label]["start"], marks[label]["end"])
        trips = [x for d in ("retail", "airline") for x in client_round_trips(sweep[f"{label}/out/{d}.json"])]
        r["client_round_trip_mean_s"] = round(st.mean(trips), 3)
        r["client_over_engine"] = round(r["client_round_trip_mean_s"] / r["server"]["engine_inference_s"], 2)
        runs[label] = r
    det, plain = members(dev / "det_runs.tgz"), members(dev / "plain_det.tgz")
    ident = {}
    for d in ("retail", "airline"):
        a, b = trajectories(det[f"det8/out/{d}.json"]), trajectories(det[f"detA/out/{d}.json"])
        p, n = trajectories(plain[f"plain/{d}.json"]), trajectories(sweep[f"base20/out/{d}.json"])
        won = lambda r: sorted(k[0] for k, v in r.items() if v[1] == 1.0)  # noqa: E731
        ident[d] = {"simulations": len(a), "det8_vs_detA_identical": sum(a[k] == b[k] for k in a),
                    "plain_tau2_vs_det8_identical": sum(p[k] == a[k] for k in a),
                    "not_deterministic_base20_vs_det8_identical": sum(n[k] == a[k] for k in a),
                    "success_det8": won(a), "success_detA": won(b), "success_plain_tau2": won(p)}
    return {"sweep": runs, "deterministic": {"identity": ident,
                                              "det8": summary_of(det["det8/out/summary.json"]),
                                              "detA": summary_of(det["detA/out/summary.json"]),
                                              "plain_tau2_wall": plain["plain/wall.txt"].decode().strip()},
            "full": {k: summary_of((dev / f"{k}_summary.json").read_bytes())
                     | {"process_wall": (dev / f"{k}_wall.txt").read_text().strip()} for k in ("full1", "full4")}}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
