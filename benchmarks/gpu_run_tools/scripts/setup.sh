#!/bin/bash
# last transfer: install the kit (vLLM 0.24.0 + tau2 wheels + gguf), build the tool model from the GGUF
source .gpukit/g/common.sh
exec > >(tee $OUT/setup.txt) 2>&1
mkdir -p /root/kit && cp -r .gpukit/t/15/* /root/kit/
ls /root/kit | wc -l; du -sh /root/kit
t0=$(ts); bash /root/kit/install.sh || exit 1; echo "install.sh took $(dt $(ts) $t0)s"
t0=$(ts); python3 $G/tools/make_tool_model.py --gguf /root/kit/q05.gguf --out $M --cache-dir /root/tmc || exit 1
echo "model build took $(dt $(ts) $t0)s"; cat $M/tool_model_build.json; du -sh $M
python3 -c "import vllm, tau2, litellm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'litellm ok')" 2>&1 | grep -v "DEBUG\|WARNING"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -V
