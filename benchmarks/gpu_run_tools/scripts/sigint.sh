#!/bin/bash
# sigint.sh CACHE: launcher with 2 servers sharing the GPU (new policy), mock tasks; Ctrl-C (SIGINT) once the
# first simulation finished; poll every 0.2 s until no vLLM process, no compute app and 0 MiB used.
source .gpukit/g/common.sh
R=/root/r/sigint; rm -rf $R; mkdir -p $R
gpu_quiet
set -m
VLLM_CACHE_ROOT=/root/cc/$1 python3 $G/run_local.py "${MODEL_ARGS[@]}" --num-servers 2 --servers-per-gpu 2 --start-port auto \
  --domains mock retail --num-tasks 10 --max-steps 20 --max-concurrency 16 --output-dir $R/out --log-dir $R/logs \
  --model-config-path $R/mc.json > $R/stdout.txt 2>&1 &
L=$!; set +m; t0=$(date +%s)
{
until [ -e $R/mc.json ] && grep -qE "(mock|retail): [1-9][0-9]*/" $R/stdout.txt; do
  sleep 0.2; alive $L || { echo "launcher ended early"; break; }
  [ $(( $(date +%s) - t0 )) -gt 240 ] && { echo "timeout waiting"; break; }
done
echo "waited $(( $(date +%s) - t0 ))s for the endpoint file + 1 finished simulation"
echo "before SIGINT: $(gpu_used) MiB used, $(pgrep -f vllm.entrypoints | wc -l) vLLM processes"
k=$(ts); kill -INT $L; gone=""
while :; do
  apps=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader); procs=$(pgrep -f vllm.entrypoints); used=$(gpu_used)
  [ -z "$gone" ] && ! alive $L && { gone=$(dt $(ts) $k); echo "launcher exited after ${gone}s"; }
  [ -z "$apps" ] && [ -z "$procs" ] && [ "$used" -lt 10 ] && break
  [ "$(dt $(ts) $k | cut -d. -f1)" -gt 60 ] && { echo "still there after 60s: $apps / $procs / $used MiB"; break; }
  sleep 0.2
done
echo "SIGINT -> no vLLM process, no compute app, $(gpu_used) MiB used: $(dt $(ts) $k)s"
wait $L; echo "launcher rc=$?"
} 2>&1 | tee $OUT/sigint_result.txt
grep -E "started|serves|all servers|stopped|interrupted" $R/stdout.txt | cut -c1-200 | tee -a $OUT/sigint_result.txt
