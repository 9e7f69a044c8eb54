#!/bin/bash
# sweep.sh: one server exactly as the launcher plans it by default (its --dry-run command, 8 API servers), as a
# daemon; then run_local.py --skip-server-start against it: adaptive (the default) twice and fixed
# --max-concurrency 164, 96, 48, the prefix cache reset before each run (VLLM_SERVER_DEV_MODE's
# /reset_prefix_cache) so that every run starts cold; then 20 tasks per domain (the --deterministic baseline).
source benchmarks/gpu_eval/scripts/common.sh
mkdir -p $R; PORT=8100
python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port $PORT "${EVAL_ARGS[@]}" \
  --output-dir $R/x/out --log-dir $R/x/logs --model-config-path $R/x/mc.json --dry-run > $OUT/sweep_plan.txt 2>&1
daemon_server $OUT/sweep_plan.txt $R/sweepsrv
wait_serving $PORT 330 || { echo "server did not come up"; tail -30 $R/sweepsrv.err; exit 1; }
echo '{"qwen": [{"ip_addr": "127.0.0.1", "port": "'$PORT'"}]}' > $R/mc.json
python3 benchmarks/gpu_api_servers/scripts/metrics_raw.py $OUT/sweep_metrics.jsonl 2 http://127.0.0.1:$PORT & MS=$!
run() {  # LABEL TIMEOUT EXTRA...
  local L=$1 T=$2; shift 2; rm -rf $R/$L
  curl -s -X POST localhost:$PORT/reset_prefix_cache >/dev/null
  local t0; t0=$(ts); echo "$L start $t0" >> $OUT/sweep_marks.txt
  timeout -s INT $T python3 run_local.py --skip-server-start --model-config-path $R/mc.json --served-model-name qwen \
    --user-llm qwen "$@" --output-dir $R/$L/out --log-dir $R/$L/logs > $R/$L.stdout 2>&1
  echo "$L rc=$? wall=$(dt $(ts) $t0) end $(ts)" | tee -a $OUT/sweep_marks.txt
  grep -E "preflight:|simulations first|wall|concurrency" $R/$L.stdout | tail -4
}
run adaptive 150 "${EVAL_ARGS[@]}"
run c164 150 "${EVAL_ARGS[@]}" --max-concurrency 164
run c96 150 "${EVAL_ARGS[@]}" --max-concurrency 96
run c48 150 "${EVAL_ARGS[@]}" --max-concurrency 48
run adaptive2 150 "${EVAL_ARGS[@]}"
run base20 120 "${EVAL_ARGS[@]}" --num-tasks 20
kill $MS; stop_group $R/sweepsrv.pid
cd $R && tar czf $OUT/sweep_runs.tgz adaptive c164 c96 c48 adaptive2 base20 *.stdout sweepsrv.err 2>/dev/null; ls -la $OUT
