#!/bin/sh
# Issue 18, session 8: HALOC + channel pruning in one search (haloc-joint) and its uniform-width control, cell by
# cell (resumable: finished cells are skipped). Log: search/results/haloc/joint8.log
#   SEEDS="0 1 2" TARGETS="0.6 0.7" sh search/results/haloc/joint8.sh >> search/results/haloc/joint8.log 2>&1
cd "$(dirname "$0")/../../.." || exit 1
SPEC=${SPEC:-search/bench-methods-haloc-joint-v2-cifar10-resnet20.toml}   # v1: ...-haloc-joint-cifar10-...
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods $SPEC"
for seed in ${SEEDS:-0 1 2}; do
  for t in ${TARGETS:-0.6 0.7}; do
    $H --only "haloc-joint__asic-tpu32__t${t}__s${seed}"
    $H --only "uniform__asic-tpu32__t${t}__s${seed}"
  done
done
