#!/bin/bash
# plain.sh TIMEOUT_S: stock `tau2 run` (the commands run_local.py --dry-run printed in eval.sh), both domains
# at once against the same server, /metrics sampled; then the saturating load (load.py); then stop the server.
source benchmarks/gpu_workers/scripts/common.sh
R=/root/r/plain; rm -rf $R; mkdir -p $R; PORT=8100
curl -sf localhost:$PORT/health >/dev/null || { echo "eval server is gone"; exit 1; }
python3 benchmarks/gpu_run_tools/scripts/metrics.py $OUT/metrics_plain.csv 2 http://127.0.0.1:$PORT & MS=$!
t0=$(ts); pids=()
while read -r line; do
  d=$(echo "$line" | sed 's/.*--domain \([a-z]*\).*/\1/')
  eval "timeout -s INT ${1:-330} python3 -m tau2.cli ${line#*tau2 } --skip-failed-samples --results-dir $R --save-to $d" > $R/$d.stdout 2>&1 &
  pids+=($!)
done < <(grep "^  tau2 run" /root/r/eval_plan.txt)
for p in "${pids[@]}"; do wait $p; echo "tau2 pid $p rc=$?"; done
echo "plain tau2 run (both domains at once) wall=$(dt $(ts) $t0)s" | tee $R/wall.txt
kill $MS
LOAD_LEVELS=64x256,256x1024,512x2048 python3 benchmarks/gpu_run_tools/scripts/load.py http://127.0.0.1:$PORT qwen > $OUT/load.json 2>&1; cat $OUT/load.json
g=$(cat /root/r/evalsrv.pid); kill -TERM -- -$g; sleep 0.3; kill -TERM -- -$g
for _ in $(seq 100); do kill -0 -- -$g 2>/dev/null || break; sleep 0.1; done; kill -KILL -- -$g 2>/dev/null
gpu_quiet
for d in retail airline; do tail -3 $R/$d.stdout; done
tar czf $OUT/plain.tgz -C /root/r plain
