#!/bin/sh
# Issue 18, session 9: HALOC on the local CPU (wall clock, one thread) through the harness, cell by cell, resumable
# (finished cells are skipped): haloc, uniform-rank and uniform width (its control) from
# search/bench-methods-haloc-local-cpu-cifar10-resnet20.toml, the l1l2 low-rank gates from
# search/bench-methods-haloc-l1l2-local-cpu-cifar10-resnet20.toml.
#   sh search/results/haloc/local9.sh >> search/results/haloc/local9.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
R="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods"
M=search/bench-methods-haloc-local-cpu-cifar10-resnet20.toml
L=search/bench-methods-haloc-l1l2-local-cpu-cifar10-resnet20.toml
for seed in ${SEEDS:-0 1 2}; do
  for t in ${TARGETS:-0.7 0.6}; do
    for e in haloc uniform-rank uniform; do
      echo "== $(date -u +%H:%M:%S) $e t$t s$seed"
      $R $M --only "${e}__local-cpu__t${t}__s${seed}"
    done
    echo "== $(date -u +%H:%M:%S) l1l2-lowrank t$t s$seed"
    $R $L --only "l1l2-lowrank__local-cpu__t${t}__s${seed}"
  done
done
echo "== $(date -u +%H:%M:%S) done"
