#!/bin/bash
# sigint.sh: the launcher serves the model itself (1 server; compile cache warm from eval.sh) and runs
# retail + airline with its defaults (adaptive concurrency, worker processes); Ctrl-C (SIGINT) once 10
# simulations finished; poll every 0.2 s until no vLLM process, no simulation worker and 0 MiB used.
source benchmarks/gpu_workers/scripts/common.sh
R=/root/r/sigint; rm -rf $R; mkdir -p $R
gpu_quiet
set -m
VLLM_CACHE_ROOT=/root/.cache/vllm python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port auto "${EVAL_ARGS[@]}" \
  --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json > $R/stdout.txt 2>&1 &
L=$!; set +m; t0=$(date +%s)
{
until grep -qE "(retail|airline): ([1-9][0-9]+)/" $R/stdout.txt; do
  sleep 0.2; alive $L || { echo "launcher ended early"; break; }
  [ $(( $(date +%s) - t0 )) -gt 300 ] && { echo "timeout waiting"; break; }
done
echo "waited $(( $(date +%s) - t0 ))s for the server + 10 finished simulations"
echo "before SIGINT: $(gpu_used) MiB used, $(pgrep -f vllm.entrypoints | wc -l) vLLM processes, $(pgrep -f spawn_main | wc -l) worker processes"
k=$(ts); kill -INT $L; gone=""
while :; do
  apps=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader); procs=$(pgrep -f "vllm.entrypoints|spawn_main"); used=$(gpu_used)
  [ -z "$gone" ] && ! alive $L && { gone=$(dt $(ts) $k); echo "launcher exited after ${gone}s"; }
  [ -z "$apps" ] && [ -z "$procs" ] && [ "$used" -lt 10 ] && break
  [ "$(dt $(ts) $k | cut -d. -f1)" -gt 60 ] && { echo "still there after 60s: $apps / $procs / $used MiB"; break; }
  sleep 0.2
done
echo "SIGINT -> no vLLM process, no worker, no compute app, $(gpu_used) MiB used: $(dt $(ts) $k)s"
while alive $L; do sleep 0.1; done  # (not our child here: this block runs in a subshell)
} 2>&1 | tee $OUT/sigint_result.txt
grep -vE "simulations, avg reward" $R/stdout.txt | cut -c1-200 | tail -25 | tee -a $OUT/sigint_result.txt
