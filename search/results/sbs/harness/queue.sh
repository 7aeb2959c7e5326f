#!/bin/sh
# Issue 19, session 7: the SBS harness cells one at a time (seed 0 first, targets 0.7, 0.6, 0.5), each spec
# resumable (finished cells are skipped). Log: search/results/sbs/harness/queue.log
cd "$(dirname "$0")/../../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods"
S=search/bench-methods-sbs-cifar10-resnet20.toml
C=search/bench-methods-sbs-controls-cifar10-resnet20.toml
L=search/bench-methods-sbs-l1l2bits-cifar10-resnet20.toml
for seed in ${SEEDS:-0}; do
  for t in ${TARGETS:-0.7 0.6 0.5}; do
    $H $S --only "sbs__asic-tpu32__t${t}__s${seed}"
    $H $C --only "__t${t}__s${seed}"
    $H $L --only "__t${t}__s${seed}"
  done
done
# then the harness's own controls (channel pruning at W8A8 matched to SBS's measured latency, float fine-tune)
for seed in ${SEEDS:-0}; do
  for t in ${TARGETS:-0.7 0.6 0.5}; do
    $H $S --only "__t${t}__s${seed}"
  done
done
