#!/bin/bash
# eval.sh TIMEOUT_S: one server exactly as the launcher plans it (its --dry-run command), started as a daemon
# so the next call (plain.sh) runs stock `tau2 run` and the saturating load against the same process; then
# run_local.py against it (--skip-server-start; default, adaptive concurrency; default workers), with
# vLLM's /metrics sampled every 2 s.
source benchmarks/gpu_workers/scripts/common.sh
R=/root/r/eval; rm -rf $R; mkdir -p $R; PORT=8100
python3 run_local.py "${MODEL_ARGS[@]}" --num-servers 1 --start-port $PORT "${EVAL_ARGS[@]}" \
  --output-dir $R/out --log-dir $R/logs --model-config-path $R/mc.json --dry-run > $OUT/eval_plan.txt 2>&1
cmd=$(grep -A1 '^server commands:' $OUT/eval_plan.txt | tail -1 | sed 's/^ *//')
echo "server: $cmd"
gpu_quiet; t0=$(ts)
VLLM_CACHE_ROOT=/root/cc/eval setsid nohup bash -c "exec env $cmd" > /root/r/evalsrv.out 2> /root/r/evalsrv.err < /dev/null &
echo $! > /root/r/evalsrv.pid; cp $OUT/eval_plan.txt /root/r/eval_plan.txt
until curl -sf localhost:$PORT/health >/dev/null && curl -sf localhost:$PORT/v1/models | grep -q qwen; do
  sleep 0.5; [ "$(dt $(ts) $t0 | cut -d. -f1)" -gt 300 ] && { echo "server did not come up"; tail -30 /root/r/evalsrv.err; exit 1; }
done
echo "eval server (1.5B, cold) serves after $(dt $(ts) $t0)s"
curl -s localhost:$PORT/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"qwen","messages":[{"role":"user","content":"What is the weather in Paris?"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Get the weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],"temperature":0}' > $OUT/toolcall_check.json
head -c 600 $OUT/toolcall_check.json; echo
echo '{"qwen": [{"ip_addr": "127.0.0.1", "port": "'$PORT'"}]}' > /root/r/mc.json
python3 benchmarks/gpu_run_tools/scripts/metrics.py $OUT/metrics_runlocal.csv 2 http://127.0.0.1:$PORT & MS=$!
t0=$(ts)
timeout -s INT ${1:-400} python3 run_local.py --skip-server-start --model-config-path /root/r/mc.json \
  --served-model-name qwen --user-llm qwen "${EVAL_ARGS[@]}" --output-dir $R/out --log-dir $R/logs > $OUT/eval_runlocal_stdout.txt 2>&1
echo "run_local rc=$? wall=$(dt $(ts) $t0)s" | tee -a $OUT/eval_runlocal_stdout.txt
kill $MS
grep -v "simulations, avg reward" $OUT/eval_runlocal_stdout.txt | tail -30
tar czf $OUT/eval_runlocal.tgz -C /root/r eval
