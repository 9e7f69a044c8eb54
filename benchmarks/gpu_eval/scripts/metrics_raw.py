"""Sample vLLM's /metrics every INTERVAL s until killed; write each sample's chosen counters as one JSON line.

python3 metrics_raw.py OUT.jsonl INTERVAL URL
Counters: requests running/waiting, generation/prompt tokens, and the sum and count of the e2e latency,
queue, inference (engine), prefill, decode and time-to-first-token histograms (summed over API servers)."""
import json
import subprocess
import sys
import time
import urllib.request

KEEP = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total", "vllm:request_success_total")
HIST = ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds", "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds", "vllm:time_to_first_token_seconds")


def sample(url):
    v = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            base = name.rsplit("_", 1)[0]
            if name in KEEP or (base in HIST and name.endswith(("_sum", "_count"))):
                v[name] = v.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return v


def main():
    out, interval, url = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    with open(out, "a") as f:
        while True:
            t = time.time()
            try:
                util = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout.split()[0]
            except Exception:
                util = None
            try:
                v = sample(url)
                v.update(t=round(t, 2), gpu_util=util)
                f.write(json.dumps(v) + "\n")
                f.flush()
            except Exception:
                pass
            time.sleep(max(0.0, interval - (time.time() - t)))


if __name__ == "__main__":
    main()
