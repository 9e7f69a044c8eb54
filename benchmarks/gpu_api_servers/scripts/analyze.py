"""python3 analyze.py DEVICE_DIR > results.json: runs A and B from summary.json, wall.txt, stdout and /metrics."""
import json
import re
import sys
from pathlib import Path


def mean_of(last: dict, name: str) -> float | None:
    """A vLLM histogram's mean from its last /metrics sample."""
    count = last.get(f"vllm:{name}_count")
    return last.get(f"vllm:{name}_sum", 0) / count if count else None


def run(folder: Path, label: str) -> dict:
    s = json.loads((folder / f"{label}_summary.json").read_text())
    out = (folder / f"{label}_stdout.txt").read_text()
    wall = float(re.search(r"wall=([\d.]+)", (folder / f"{label}_wall.txt").read_text()).group(1))
    plan = (folder / f"{label}_plan.txt").read_text()
    server = [line.strip() for line in plan.splitlines() if "cli.main serve" in line][0]
    rows = [json.loads(line) for line in (folder / f"{label}_metrics.jsonl").read_text().splitlines()]
    last, c = rows[-1], s["concurrency"]
    return {"server_command": server, "process_wall_s": wall,
            "domains": {k: {"wall_time_s": v["wall_time_s"], "avg_reward": round(v["avg_reward"], 4),
                            "simulations": v["simulations"]} for k, v in s["domains"].items()},
            "overall_wall_time_s": s["overall"]["wall_time_s"],
            "concurrency": {"peak_in_flight": c["peak_in_flight"], "final_target": c["final_target"],
                            "targets": [r["target"] for r in c["readings"]],
                            "first_reading_t": c["readings"][0]["t"]},
            "server": {"requests": last.get("vllm:e2e_request_latency_seconds_count"),
                       "e2e_mean_s": mean_of(last, "e2e_request_latency_seconds"),
                       "queue_mean_s": mean_of(last, "request_queue_time_seconds"),
                       "inference_mean_s": mean_of(last, "request_inference_time_seconds"),
                       "ttft_mean_s": mean_of(last, "time_to_first_token_seconds"),
                       "running_max": max(r.get("vllm:num_requests_running", 0) for r in rows),
                       "waiting_max": max(r.get("vllm:num_requests_waiting", 0) for r in rows)},
            "log_lines": [line for line in out.splitlines()
                          if re.search(r"server|healthy|simulations started|ready", line)][:12]}


if __name__ == "__main__":
    print(json.dumps({label: run(Path(sys.argv[1]), label) for label in ("A", "B")}, indent=1))
