#!/bin/bash
# After the kit is installed and the 1.5B GGUF's pieces are in /root/kit: build the model folder.
source benchmarks/gpu_workers/scripts/common.sh
exec > >(tee $OUT/build_model.txt) 2>&1
cd /root/kit  # install.sh joins every NAME.part.00.. itself; join here only if it has not
[ -e q15.gguf.part.00 ] && cat q15.gguf.part.* > q15.gguf && rm -f q15.gguf.part.*
ls -l q15.gguf && sha256sum q15.gguf; cd - >/dev/null
t0=$(ts); python3 tools/make_tool_model.py --gguf /root/kit/q15.gguf --out $M --cache-dir /root/tmc || exit 1
echo "model build took $(dt $(ts) $t0)s"; cat $M/tool_model_build.json; du -sh $M
