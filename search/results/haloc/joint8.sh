#!/bin/sh
# Issue 18, session 8: HALOC + channel pruning in one search (haloc-joint) and its uniform-width control, cell by
# cell (resumable: finished cells are skipped). Log: search/results/haloc/joint8.log
cd "$(dirname "$0")/../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods search/bench-methods-haloc-joint-cifar10-resnet20.toml"
for seed in ${SEEDS:-0 1 2}; do
  for t in ${TARGETS:-0.6 0.7}; do
    $H --only "haloc-joint__asic-tpu32__t${t}__s${seed}"
    $H --only "uniform__asic-tpu32__t${t}__s${seed}"
  done
done
