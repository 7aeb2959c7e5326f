#!/bin/sh
# Issue 16, session 10: the local-cpu half of the harness (v6 spec) — the FLOPs-only self (flops-matched) at the
# targets and seeds it lacks, random search and the plateaued TPE — cell by cell, resumable (finished cells are
# skipped). Two queues share the 2-core machine (local-cpu ratios are interleaved comparisons, so load cancels):
#   ENTRIES=flops-matched sh search/results/v6ctl/queue10.sh >> search/results/v6ctl/queue10-a.log 2>&1 &
#   ENTRIES="random tpe-plateau" sh search/results/v6ctl/queue10.sh >> search/results/v6ctl/queue10-b.log 2>&1 &
cd "$(dirname "$0")/../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods search/bench-methods-cifar10-resnet20-v6.toml"
for seed in ${SEEDS:-0 1 2}; do
  for entry in ${ENTRIES:-flops-matched random tpe-plateau}; do
    for t in ${TARGETS:-0.5 0.6 0.7}; do
      echo "== $(date -u +%H:%M:%S) $entry t$t s$seed"
      $H --only "${entry}__local-cpu__t${t}__s${seed}"
    done
  done
done
echo "== $(date -u +%H:%M:%S) done"
