#!/bin/sh
# Issue 19, session 8: the SBS harness cells still missing (seed 2 at 0.7 / 0.6, every seed at 0.5), one cell at a
# time per process, each spec resumable (finished cells are skipped). Usage:
#   PAIRS="2:0.7 2:0.6 2:0.5 1:0.5" sh search/results/sbs/harness/queue8.sh >> search/results/sbs/harness/queue8a.log 2>&1
# (seed:target pairs; the spec's own uniform / magnitude controls against SBS are not run here: the issue's
# controls are the W4A4, prune-then-W8A8 and l1l2-bits entries).
cd "$(dirname "$0")/../../../.." || exit 1
H="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/hwloop bench methods"
S=search/bench-methods-sbs-cifar10-resnet20.toml
C=search/bench-methods-sbs-controls-cifar10-resnet20.toml
L=search/bench-methods-sbs-l1l2bits-cifar10-resnet20.toml
for pair in ${PAIRS:-2:0.7}; do
  seed=${pair%%:*}; t=${pair#*:}
  $H $S --only "sbs__asic-tpu32__t${t}__s${seed}"
  $H $C --only "__t${t}__s${seed}"
  $H $L --only "__t${t}__s${seed}"
done
