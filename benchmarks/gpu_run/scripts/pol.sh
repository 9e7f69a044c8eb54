#!/bin/bash
# startup-policy runs: pol.sh BUDGET_S NAME:CACHEROOT:STAGGER ...   (CACHEROOT 'default' = unset; STAGGER '-' = default policy)
source .gpukit/run/common.sh
budget=$1; shift; start=$(date +%s)
for spec in "$@"; do
  IFS=: read name root stag <<< "$spec"
  el=$(( $(date +%s) - start )); if [ $((budget - el)) -lt 200 ]; then echo "SKIP $name: only $((budget-el))s left"; continue; fi
  R=/root/r/$name; rm -rf $R; mkdir -p $R
  env_root=(); [ "$root" != default ] && env_root=(VLLM_CACHE_ROOT=$root)
  [ "$root" != default ] && echo "cache root $root exists before: $(ls -A $root 2>/dev/null | wc -l) entries, $(du -sh $root 2>/dev/null | cut -f1)"
  sarg=(); [ "$stag" != - ] && sarg=(--stagger-delay $stag)
  t0=$(ts)
  env "${env_root[@]}" timeout -s INT $((budget - el - 10)) python3 run_local.py --agent-model $M --served-model-name smollm2 --user-llm smollm2 --num-servers 2 --servers-per-gpu 2 --max-model-len 8192 --domains mock --num-tasks 1 --max-steps 4 --start-port auto "${sarg[@]}" --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json > $OUT/$name.txt 2>&1
  rc=$?; t1=$(ts)
  gpu_state after >> $OUT/$name.txt 2>&1
  echo "== $name (root=$root stagger=$stag) rc=$rc wall=$(dt $t1 $t0)s"; grep -E "started|serves|lost a GPU|all servers|error|Error" $OUT/$name.txt | cut -c1-250
done | tee -a $OUT/policy_times.txt
du -sh ~/.cache/vllm ~/.triton /tmp/torchinductor_root /root/cc/* 2>/dev/null | tee -a $OUT/policy_times.txt
