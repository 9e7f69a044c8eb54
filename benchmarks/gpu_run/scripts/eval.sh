#!/bin/bash
# the real evaluation: 2 servers on the one GPU, tiny model as agent and user
source .gpukit/run/common.sh
R=/root/r/eval; rm -rf $R; mkdir -p $R
( while :; do echo "$(date -u +%T) $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)"; sleep 5; done ) > $OUT/gpumem_during_eval.txt 2>&1 &
SAMPLER=$!
t0=$(ts)
timeout -s INT 480 python3 run_local.py --agent-model $M --served-model-name smollm2 --user-llm smollm2 --num-servers 2 --servers-per-gpu 2 --max-model-len 8192 --domains mock retail --num-tasks 5 --max-steps 20 --max-concurrency 8 --start-port auto --output-dir $R/out --log-dir $R/logs --model-config-path $R/model_config_local.json 2>&1 | tee $OUT/eval_stdout.txt
rc=${PIPESTATUS[0]}
t1=$(ts)
gpu_state "right after launcher exit (rc=$rc, wall $(dt $t1 $t0)s)" > $OUT/after_exit.txt 2>&1
kill $SAMPLER
sleep 2; gpu_state "2 s later" >> $OUT/after_exit.txt 2>&1
cat $OUT/after_exit.txt
cp $R/model_config_local.json $OUT/ 2>/dev/null
tar -C /root/r -czf $OUT/eval_files.tgz eval
echo "launcher rc=$rc wall=$(dt $t1 $t0)s"
