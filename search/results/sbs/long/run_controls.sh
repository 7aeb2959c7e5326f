#!/bin/sh
# The controls of run.sh in their own process per target (same settings: 200 QAT batches of 64, the sound path).
cd "$(dirname "$0")/../../../.."
T="$1"; S="${2:-0}"; O=search/results/sbs/long/t$T/controls; [ "$S" = 0 ] || O=search/results/sbs/long/t$T/s$S/controls
mkdir -p $O; [ -f $O/costs.db ] || cp search/results/sbs/gate_step/controls/costs.db $O/costs.db
env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py \
  --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 \
  --control-ft-steps 200 --w-range mse --phases w4a4,ptq --targets "$T" --bops-targets '' --seeds "$S" \
  --val-limit 2000 --eval-limit 1000 --out $O > $O/bench.log 2>&1
