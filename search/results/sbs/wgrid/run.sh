#!/bin/sh
# Session 6 task 2 (issue 19): SBS with the search priced as the export (w_grid = plan: every weight level on the
# plan's symmetric per-channel grid with the least-error step, 2 bits ternary), w_levels 2,4,8; the schedule of
# search/results/sbs/long/run.sh (100 search + 100 QAT batches of 64). Usage: run.sh TARGET [SEED]
cd "$(dirname "$0")/../../../.."
T="$1"; S="${2:-0}"; O=search/results/sbs/wgrid/t$T; [ "$S" = 0 ] || O=$O/s$S
mkdir -p $O; [ -f $O/costs.db ] || cp search/results/sbs/gate_step/controls/costs.db $O/costs.db
env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py \
  --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 \
  --w-range mse --w-levels 2,4,8 --w-grid plan --phases sbs-lat --targets "$T" --bops-targets '' --seeds "$S" \
  --val-limit 2000 --eval-limit 1000 --out $O --figure $O/sbs_bitmap.png > $O/bench.log 2>&1
