# sourced by the run scripts on the GPU machine
export PYTHONPATH=/tmp/site LITELLM_LOCAL_MODEL_COST_MAP=True VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
M=/root/models/smollm2-135m
ts() { date +%s.%N; }
gpu_state() {  # label
  echo "== $1 $(date -u +%FT%T.%3NZ)"
  nvidia-smi --query-gpu=memory.used --format=csv
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv
  echo "ps -ef | grep -c vllm: $(ps -ef | grep -c vllm)"
  ps -ef | grep vllm | grep -v grep || echo "(no vllm process besides the grep)"
}
dt() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", a-b}'; }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null); [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
