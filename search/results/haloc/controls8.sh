#!/bin/sh
# Issue 18, session 8: the HALOC spec's `flops` and `magnitude` controls (resumable; finished cells are skipped).
#   sh search/results/haloc/controls8.sh >> search/results/haloc/controls8.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods search/bench-methods-haloc-cifar10-resnet20.toml"
for c in ${CONTROLS:-flops magnitude}; do
  for seed in ${SEEDS:-0 1 2}; do
    for t in ${TARGETS:-0.6 0.7}; do
      $H --only "${c}__asic-tpu32__t${t}__s${seed}"
    done
  done
done
