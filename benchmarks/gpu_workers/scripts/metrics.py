"""Sample vLLM's /metrics of the given servers every INTERVAL s until killed: one CSV line per sample.

python3 metrics.py OUT.csv INTERVAL URL...   (URL like http://127.0.0.1:8100)
Columns: unix time, server, requests running, waiting, KV-cache use (0..1), generation tokens so far,
prompt tokens so far, GPU utilisation % (nvidia-smi)."""
import subprocess
import sys
import time
import urllib.request

WANTED = {
    "vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv", "vllm:gpu_cache_usage_perc": "kv",
    "vllm:generation_tokens_total": "gen", "vllm:prompt_tokens_total": "prompt",
}


def sample(url: str) -> dict:
    values = {}
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in WANTED:
                values[WANTED[name]] = values.get(WANTED[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def main() -> None:
    out, interval, urls = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    with open(out, "a") as f:
        f.write("t,server,running,waiting,kv_use,gen_tokens,prompt_tokens,gpu_util\n")
        while True:
            t = time.time()
            try:
                util = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
            except Exception:
                util = ""
            for url in urls:
                try:
                    v = sample(url)
                except Exception:
                    continue
                f.write(f"{t:.1f},{url.rsplit(':', 1)[1]},{v.get('running', 0):.0f},{v.get('waiting', 0):.0f},"
                        f"{v.get('kv', 0):.4f},{v.get('gen', 0):.0f},{v.get('prompt', 0):.0f},{util}\n")
            f.flush()
            time.sleep(max(0.0, interval - (time.time() - t)))


if __name__ == "__main__":
    main()
