#!/bin/sh
# Session 6 task 2 (issue 19): SBS without the 2-bit weight level (w_levels = [4, 8]), the schedule of
# search/results/sbs/long/run.sh (100 search + 100 QAT batches of 64, w_range mse, a_signed auto, a_range mse).
# Usage: run.sh TARGET [SEED] [LEVELS]   (targets run one after the other, never side by side)
cd "$(dirname "$0")/../../../.."
T="$1"; S="${2:-0}"; L="${3:-4,8}"; O=search/results/sbs/wlevels/t$T; [ "$S" = 0 ] || O=$O/s$S
mkdir -p $O; [ -f $O/costs.db ] || cp search/results/sbs/gate_step/controls/costs.db $O/costs.db
env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py \
  --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 \
  --w-range mse --w-levels "$L" --phases sbs-lat --targets "$T" --bops-targets '' --seeds "$S" \
  --val-limit 2000 --eval-limit 1000 --out $O --figure $O/sbs_bitmap.png > $O/bench.log 2>&1
