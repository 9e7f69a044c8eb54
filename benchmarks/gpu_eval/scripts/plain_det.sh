#!/bin/bash
# plain_det.sh: the batch-invariant server as det.sh's detA planned it (its --dry-run command), as a daemon; stock
# `tau2 run` (the --dry-run's one-endpoint equivalents, 20 tasks per domain, both domains at once) against it.
source benchmarks/gpu_eval/scripts/common.sh
P=8400; sed "s/--port 8300/--port $P/; s/:8300/:$P/g" benchmarks/gpu_eval/device/detA_plan.txt > $R/plain_plan.txt 2>/dev/null || true
daemon_server $R/plain_plan.txt $R/plainsrv
wait_serving $P 330 || { echo "server did not come up"; tail -30 $R/plainsrv.err; exit 1; }
rm -rf $R/plain; mkdir -p $R/plain; t0=$(ts); pids=()
while read -r line; do
  d=$(echo "$line" | sed 's/.*--domain \([a-z]*\).*/\1/')
  eval "timeout -s INT 300 python3 -m tau2.cli ${line#*tau2 } --skip-failed-samples --results-dir $R/plain --save-to $d" > $R/plain/$d.stdout 2>&1 &
  pids+=($!)
done < <(grep "^  tau2 run" $R/plain_plan.txt)
for p in "${pids[@]}"; do wait $p; echo "tau2 pid $p rc=$?"; done
echo "plain tau2 run (both domains at once) wall=$(dt $(ts) $t0)s" | tee $R/plain/wall.txt
stop_group $R/plainsrv.pid
grep "^  tau2 run" $R/plain_plan.txt; for d in retail airline; do tail -3 $R/plain/$d.stdout; done
cd $R && tar czf $OUT/plain_det.tgz plain plain_plan.txt plainsrv.err; ls -la $OUT
