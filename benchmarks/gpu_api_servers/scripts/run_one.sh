#!/bin/bash
# run_one.sh LABEL [EXTRA LAUNCHER ARGS...]: the launcher itself starts the server (cold compile cache of its
# own), runs retail + airline, stops the server. /metrics sampled every 2 s; everything lands in $OUT.
export PYTHONPATH=/tmp/site LITELLM_LOCAL_MODEL_COST_MAP=True VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
L=$1; shift
S=$(dirname "$0"); M=/root/models/qwen2.5-coder-1.5b; R=/root/r/$L; rm -rf $R; mkdir -p $R; PORT=${PORT:-8100}
ARGS=(--agent-model $M --served-model-name qwen --user-llm qwen --tool-call-parser llama3_json
      --max-model-len 16384 --num-servers 1 --start-port $PORT
      --domains retail airline --parallel-domains --max-steps 40 --max-new-tokens 256
      --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json "$@")
python3 run_local.py "${ARGS[@]}" --dry-run > $OUT/${L}_plan.txt 2>&1
grep -A1 '^server commands:' $OUT/${L}_plan.txt | tail -1
export VLLM_CACHE_ROOT=/root/cc/$L
python3 $S/metrics_raw.py $OUT/${L}_metrics.jsonl 2 http://127.0.0.1:$PORT & MS=$!
t0=$(date +%s.%N)
timeout -s INT 480 python3 run_local.py "${ARGS[@]}" > $OUT/${L}_stdout.txt 2>&1; rc=$?
t1=$(date +%s.%N)
kill $MS
echo "$L rc=$rc wall=$(awk -v a=$t1 -v b=$t0 'BEGIN{printf "%.1f", a-b}') t0=$t0 t1=$t1" | tee $OUT/${L}_wall.txt
tail -25 $OUT/${L}_stdout.txt
cp $R/out/summary.json $OUT/${L}_summary.json 2>/dev/null
tar czf $OUT/${L}_run.tgz -C /root/r $L
pgrep -af vllm | head -3
