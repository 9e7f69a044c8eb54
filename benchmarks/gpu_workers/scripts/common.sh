# sourced by the scripts that run on the GPU machine, from the checkout root
export PYTHONPATH=/tmp/site LITELLM_LOCAL_MODEL_COST_MAP=True VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
S=benchmarks/gpu_workers/scripts
M=/root/models/qwen2.5-coder-1.5b
MODEL_ARGS=(--agent-model $M --served-model-name qwen --user-llm qwen --tool-call-parser llama3_json --max-model-len 16384)
EVAL_ARGS=(--domains retail airline --parallel-domains --max-steps 40 --max-new-tokens 256)
ts() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", a-b}'; }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
gpu_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
gpu_quiet() {  # wait (up to 60 s) until no vLLM process and (almost) nothing on the GPU
  for _ in $(seq 300); do
    [ -z "$(pgrep -f vllm.entrypoints)" ] && [ "$(gpu_used)" -lt 100 ] && return 0; sleep 0.2
  done; echo "GPU not quiet: $(gpu_used) MiB, $(pgrep -f vllm.entrypoints | wc -l) vllm procs"
}
