#!/bin/bash
# After every chunk folder is in /root/kit (kit wheels, tau2's wheels, q15.gguf.part.NN): install, build the model.
source benchmarks/gpu_eval/scripts/common.sh
t0=$(ts); bash /root/kit/install.sh > /root/install.log 2>&1 || { tail -20 /root/install.log; exit 1; }
tail -1 /root/install.log; echo "install.sh took $(dt $(ts) $t0)s"
ls -l /root/kit/q15.gguf && sha256sum /root/kit/q15.gguf
t0=$(ts); python3 tools/make_tool_model.py --gguf /root/kit/q15.gguf --out $M --cache-dir /root/tmc || exit 1
echo "model build took $(dt $(ts) $t0)s"; du -sh $M
python3 -c "import tau2, litellm, vllm; print('tau2 ok, vllm', vllm.__version__)" 2>&1 | tail -1
nproc; nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader
