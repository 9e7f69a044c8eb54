#!/bin/bash
# startup.sh BUDGET_S NAME:LAUNCHER:SERVERS:CACHE:STAGGER ...
#   LAUNCHER new (this checkout); SERVERS 1 | 2 (sharing GPU 0);
#   CACHE cold (fresh VLLM_CACHE_ROOT /root/cc/NAME) | any other word W: reuse /root/cc/W; STAGGER - | seconds
# Each run: start the launcher, wait for "all servers serve", Ctrl-C it, wait for the GPU to be empty.
source benchmarks/gpu_workers/scripts/common.sh
budget=$1; shift; start=$(date +%s)
for spec in "$@"; do
  IFS=: read name which n cache stag <<< "$spec"
  left=$(( budget - ($(date +%s) - start) ))
  if [ $left -lt 200 ]; then echo "SKIP $name: only ${left}s left" | tee -a $OUT/startup.txt; continue; fi
  R=/root/r/$name; rm -rf $R; mkdir -p $R
  root=/root/cc/$name; [ "$cache" != cold ] && root=/root/cc/$cache
  [ "$cache" = cold ] && rm -rf $root
  launcher=run_local.py
  extra=(); [ "$n" = 2 ] && extra=(--num-servers 2 --servers-per-gpu 2) || extra=(--num-servers 1)
  [ "$stag" != - ] && extra+=(--stagger-delay $stag)
  gpu_quiet
  set -m
  VLLM_CACHE_ROOT=$root python3 $launcher "${MODEL_ARGS[@]}" "${extra[@]}" --start-port auto \
    --domains mock --num-tasks 1 --max-steps 4 --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json > $R/stdout.txt 2>&1 &
  L=$!; set +m; t0=$(ts); ready=""
  while alive $L; do
    grep -q "all servers serve after" $R/stdout.txt && { ready=$(dt $(ts) $t0); break; }
    [ $(( $(date +%s) - start )) -gt $((budget - 15)) ] && break
    sleep 0.25
  done
  k=$(ts); kill -INT $L 2>/dev/null; wait $L; rc=$?; exited=$(dt $(ts) $k)
  gpu_quiet; quiet=$(dt $(ts) $k)
  {
    echo "== $name launcher=$which servers=$n cache=$cache stagger=$stag rc=$rc ready_wall=${ready:-FAILED}s"
    echo "   Ctrl-C: launcher exited after ${exited}s; no vLLM process and <100 MiB used after ${quiet}s ($(gpu_used) MiB)"
    grep -E "started|serves|all servers|lost a GPU|exited|did not serve|Error" $R/stdout.txt | cut -c1-220
  } | tee -a $OUT/startup.txt
  { echo "######## $name"; grep -hE "Loading weights took|Model loading took|torch.compile took|Compil|Memory profiling|KV cache|kv_cache_memory_bytes|Graph capturing|init engine|Available|reserved" $R/logs/vllm_port_*.out | cut -c1-260; } >> $OUT/startup_vllm_lines.txt
done
tar -C /root/r -czf $OUT/startup_logs_$(date +%H%M%S).tgz $(for s in "$@"; do echo ${s%%:*}; done) 2>/dev/null
du -sh /root/cc/* 2>/dev/null | tee -a $OUT/startup.txt
