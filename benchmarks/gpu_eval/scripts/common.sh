# sourced by the scripts that run on the GPU machine, from the checkout root
export PYTHONPATH=/tmp/site LITELLM_LOCAL_MODEL_COST_MAP=True VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
S=benchmarks/gpu_eval/scripts
M=/root/models/qwen2.5-coder-1.5b
R=/root/r
MODEL_ARGS=(--agent-model $M --served-model-name qwen --user-llm qwen --tool-call-parser llama3_json --max-model-len 16384)
EVAL_ARGS=(--domains retail airline --parallel-domains --max-steps 40 --max-new-tokens 256)
ts() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", a-b}'; }
wait_serving() {  # PORT TIMEOUT_S
  local t0; t0=$(ts)
  until curl -sf localhost:$1/health >/dev/null && curl -sf localhost:$1/v1/models | grep -q qwen; do
    sleep 0.5; [ "$(dt $(ts) $t0 | cut -d. -f1)" -gt $2 ] && return 1
  done; echo "serves after $(dt $(ts) $t0)s"
}
daemon_server() {  # PLAN_FILE LOG: start the plan's one server command as a daemon (its own session)
  local cmd; cmd=$(grep -A1 '^server commands:' $1 | tail -1 | sed 's/^ *//')
  echo "server: $cmd"
  VLLM_SERVER_DEV_MODE=1 setsid nohup bash -c "exec env $cmd" > $2.out 2> $2.err < /dev/null &
  echo $! > $2.pid
}
stop_group() {  # PID_FILE
  local g; g=$(cat $1); kill -TERM -- -$g 2>/dev/null; sleep 0.3; kill -TERM -- -$g 2>/dev/null
  for _ in $(seq 150); do kill -0 -- -$g 2>/dev/null || break; sleep 0.1; done; kill -KILL -- -$g 2>/dev/null
}
