#!/bin/sh
# Issue 18, session 9: uniform-rank with 2x / 4x the fine-tune images (cost at equal accuracy), resumable.
#   sh search/results/haloc/equal9.sh >> search/results/haloc/equal9.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods search/bench-methods-haloc-equalacc-cifar10-resnet20.toml"
for seed in ${SEEDS:-0}; do
  for t in ${TARGETS:-0.7 0.6}; do
    for e in uniform-rank-2x uniform-rank-4x; do
      echo "== $(date -u +%H:%M:%S) $e t$t s$seed"
      $H --only "${e}__asic-tpu32__t${t}__s${seed}"
    done
  done
done
echo "== $(date -u +%H:%M:%S) done"
