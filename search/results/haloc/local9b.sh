#!/bin/sh
# Issue 18, session 9: HALOC on the local CPU with the whole-model calibration (haloc-cal, uniform-rank-cal and uniform
# width matched to haloc-cal, search/bench-methods-haloc-local-cpu-cal-cifar10-resnet20.toml) and the l1l2 low-rank
# gates (search/bench-methods-haloc-l1l2-local-cpu-cifar10-resnet20.toml), cell by cell, resumable.
#   sh search/results/haloc/local9b.sh >> search/results/haloc/local9b.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
R="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods"
C=search/bench-methods-haloc-local-cpu-cal-cifar10-resnet20.toml
L=search/bench-methods-haloc-l1l2-local-cpu-cifar10-resnet20.toml
for seed in ${SEEDS:-0 1 2}; do
  for t in ${TARGETS:-0.7 0.6}; do
    for e in haloc-cal uniform-rank-cal uniform; do
      echo "== $(date -u +%H:%M:%S) $e t$t s$seed"
      $R $C --only "${e}__local-cpu__t${t}__s${seed}"
    done
    echo "== $(date -u +%H:%M:%S) l1l2-lowrank t$t s$seed"
    $R $L --only "l1l2-lowrank__local-cpu__t${t}__s${seed}"
  done
done
echo "== $(date -u +%H:%M:%S) done"
