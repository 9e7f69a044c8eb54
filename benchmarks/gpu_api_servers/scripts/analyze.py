"""python3 analyze.py DEVICE_DIR > results.json: figures of runs A and B from summary.json, wall.txt, stdout, metrics."""
import json, re, sys, os
d = sys.argv[1]; res = {}
for L in ("A", "B"):
    s = json.load(open(f"{d}/{L}_summary.json")); out = open(f"{d}/{L}_stdout.txt").read()
    wall = float(re.search(r"wall=([\d.]+)", open(f"{d}/{L}_wall.txt").read()).group(1))
    plan = open(f"{d}/{L}_plan.txt").read(); srv = [l.strip() for l in plan.splitlines() if "cli.main serve" in l][0]
    rows = [json.loads(l) for l in open(f"{d}/{L}_metrics.jsonl")]
    last = rows[-1]; c = s["concurrency"]
    h = lambda n: (last.get(f"vllm:{n}_sum", 0) / last[f"vllm:{n}_count"]) if last.get(f"vllm:{n}_count") else None
    calls = last.get("vllm:e2e_request_latency_seconds_count")
    stamps = re.findall(r"^(\S+) .*(started agent server|serv|healthy|ready)", out, re.M)
    res[L] = {"server_command": srv, "process_wall_s": wall,
              "domains": {k: {"wall_time_s": v["wall_time_s"], "avg_reward": round(v["avg_reward"], 4),
                              "simulations": v["simulations"]} for k, v in s["domains"].items()},
              "overall_wall_time_s": s["overall"]["wall_time_s"],
              "concurrency": {"peak_in_flight": c["peak_in_flight"], "final_target": c["final_target"],
                              "targets": [r["target"] for r in c["readings"]], "first_reading_t": c["readings"][0]["t"]},
              "server": {"requests": calls, "e2e_mean_s": h("e2e_request_latency_seconds"),
                         "queue_mean_s": h("request_queue_time_seconds"),
                         "inference_mean_s": h("request_inference_time_seconds"),
                         "ttft_mean_s": h("time_to_first_token_seconds"),
                         "running_max": max(r.get("vllm:num_requests_running", 0) for r in rows),
                         "waiting_max": max(r.get("vllm:num_requests_waiting", 0) for r in rows)},
              "log_lines": [l for l in out.splitlines() if re.search(r"server|healthy|simulations started|ready", l)][:12]}
print(json.dumps(res, indent=1))
