#!/bin/bash
# api_sweep.sh: API servers per vLLM server (1, 2, 4, 8) x workers (default, 4, 16), adaptive concurrency, plus
# fixed 164 at 8 API servers; then the saturating load of the evaluation's own shape: the calls of one default
# run, recorded through record_proxy.py, sent again by replay_load.py at 64, 256 and 1024 in flight.
# Not run yet (issue 17: the device time of 2026-12-02 went to sweep.sh, det.sh, plain_det.sh and the full runs).
source benchmarks/gpu_eval/scripts/common.sh
mkdir -p $R; PORT=8100
run() {  # LABEL EXTRA...: run_local.py --skip-server-start against the endpoint file $R/mc.json
  local L=$1; shift; rm -rf $R/$L; curl -s -X POST localhost:$PORT/reset_prefix_cache >/dev/null
  local t0; t0=$(ts)
  timeout -s INT 150 python3 run_local.py --skip-server-start --model-config-path $R/mc.json --served-model-name qwen \
    --user-llm qwen "${EVAL_ARGS[@]}" "$@" --output-dir $R/$L/out --log-dir $R/$L/logs > $R/$L.stdout 2>&1
  echo "$L rc=$? wall=$(dt $(ts) $t0)" | tee -a $OUT/api_marks.txt
}
echo '{"qwen": [{"ip_addr": "127.0.0.1", "port": "'$PORT'"}]}' > $R/mc.json
for A in 8 4 2 1; do
  python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port $PORT "${EVAL_ARGS[@]}" --output-dir $R/x/out \
    --log-dir $R/x/logs --model-config-path $R/x/mc.json --vllm-arg=--api-server-count=$A --dry-run > $R/api$A.plan 2>&1
  daemon_server $R/api$A.plan $R/api$A; wait_serving $PORT 330 || { tail -20 $R/api$A.err; exit 1; }
  python3 benchmarks/gpu_api_servers/scripts/metrics_raw.py $OUT/api${A}_metrics.jsonl 2 http://127.0.0.1:$PORT & MS=$!
  run a${A}w0; run a${A}w4 --workers 4; run a${A}w16 --workers 16
  if [ $A = 8 ]; then
    run a8c164 --max-concurrency 164
    python3 $S/record_proxy.py 8199 http://127.0.0.1:$PORT $R/calls.jsonl & PX=$!; sleep 2
    echo '{"qwen": [{"ip_addr": "127.0.0.1", "port": "8199"}]}' > $R/mc.json; run recorded
    kill $PX; echo '{"qwen": [{"ip_addr": "127.0.0.1", "port": "'$PORT'"}]}' > $R/mc.json
    python3 $S/replay_load.py http://127.0.0.1:$PORT $R/calls.jsonl 64 256 1024 > $OUT/replay_load.json
  fi
  kill $MS; stop_group $R/api$A.pid; sleep 5
done
cd $R && tar czf $OUT/api_runs.tgz a*w* a8c164 recorded *.stdout; ls -la $OUT
