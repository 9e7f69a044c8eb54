#!/bin/bash
# det.sh: run_local.py --deterministic twice, each starting its own batch-invariant server, 20 tasks per domain:
# fixed --max-concurrency 8, then the adaptive default. Their trajectories are compared task for task afterwards.
source benchmarks/gpu_eval/scripts/common.sh
mkdir -p $R
det() {  # LABEL PORT TIMEOUT EXTRA...
  local L=$1 P=$2 T=$3; shift 3; rm -rf $R/$L
  python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port $P "${EVAL_ARGS[@]}" --num-tasks 20 \
    --deterministic "$@" --output-dir $R/$L/out --log-dir $R/$L/logs --model-config-path $R/$L/mc.json --dry-run \
    > $OUT/${L}_plan.txt 2>&1
  local t0; t0=$(ts)
  timeout -s INT $T python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port $P "${EVAL_ARGS[@]}" \
    --num-tasks 20 --deterministic "$@" --output-dir $R/$L/out --log-dir $R/$L/logs \
    --model-config-path $R/$L/mc.json > $R/$L.stdout 2>&1
  echo "$L rc=$? wall=$(dt $(ts) $t0)" | tee -a $OUT/det_marks.txt
  grep -E "preflight:|serves|healthy|simulations first|wall" $R/$L.stdout | tail -6
}
det det8 8200 290 --max-concurrency 8
det detA 8300 270
cd $R && tar czf $OUT/det_runs.tgz det8 detA det8.stdout detA.stdout; ls -la $OUT
