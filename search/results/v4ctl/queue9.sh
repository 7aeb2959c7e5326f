#!/bin/sh
# Issue 16, session 9: the v4 spec's FLOPs-only self (flops-matched), random search and the plateaued TPE at the
# targets 0.5 and 0.7 (they ran at 0.6 in sessions 6-7), cell by cell, resumable (finished cells are skipped).
#   sh search/results/v4ctl/queue9.sh >> search/results/v4ctl/queue9.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods search/bench-methods-cifar10-resnet20-v4.toml"
for entry in ${ENTRIES:-flops-matched random tpe-plateau}; do
  for seed in ${SEEDS:-0 1 2}; do
    for t in ${TARGETS:-0.5 0.7}; do
      echo "== $(date -u +%H:%M:%S) $entry t$t s$seed"
      $H --only "${entry}__asic-tpu32__t${t}__s${seed}"
    done
  done
done
echo "== $(date -u +%H:%M:%S) done"
