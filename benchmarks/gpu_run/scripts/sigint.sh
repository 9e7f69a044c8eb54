#!/bin/bash
# SIGINT -> all gone: start the launcher in the background, wait for the endpoint file and one finished simulation, kill -INT, poll every 0.2 s
source .gpukit/run/common.sh
set -m   # own process group for the background job, so SIGINT is not ignored as in a non-interactive shell
R=/root/r/sigint; rm -rf $R; mkdir -p $R
python3 run_local.py --agent-model $M --served-model-name smollm2 --user-llm smollm2 --num-servers 2 --servers-per-gpu 2 --max-model-len 8192 --domains mock retail --num-tasks 5 --max-steps 20 --max-concurrency 2 --start-port auto --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json > $OUT/sigint_launcher.txt 2>&1 &
L=$!
set +m
t0=$(date +%s)
{
until [ -e $R/mc.json ] && grep -qE "mock: [1-9][0-9]*/" $OUT/sigint_launcher.txt; do
  sleep 0.2; alive $L || { echo "launcher ended early"; break; }
  [ $(( $(date +%s) - t0 )) -gt 300 ] && { echo "timeout waiting"; break; }
done
echo "waited $(( $(date +%s) - t0 ))s for endpoint file + 1 simulation"
gpu_state "before SIGINT"
k=$(ts); kill -INT $L; echo "sent SIGINT to launcher pid $L"
gone=""
while :; do
  apps=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader); procs=$(pgrep -f "${PAT:-vllm}")
  if [ -z "$gone" ] && ! alive $L; then gone=$(dt $(ts) $k); echo "launcher exited after ${gone}s"; fi
  [ -z "$apps" ] && [ -z "$procs" ] && break
  [ "$(dt $(ts) $k | cut -d. -f1)" -gt 120 ] && { echo "still there after 120s: $apps / $procs"; break; }
  sleep 0.2
done
echo "SIGINT -> no GPU compute apps and no vllm processes: $(dt $(ts) $k)s"
nvidia-smi --query-gpu=memory.used --format=csv,noheader
while [ -z "$gone" ] && alive $L; do sleep 0.2; done; [ -z "$gone" ] && echo "launcher exited after $(dt $(ts) $k)s"
wait $L; echo "launcher rc=$?"
gpu_state "after"
} > $OUT/sigint_result.txt 2>&1
cat $OUT/sigint_result.txt
tail -25 $OUT/sigint_launcher.txt
