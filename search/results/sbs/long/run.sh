#!/bin/sh
# Task 2 of session 5 (issue 19): SBS and its controls with the sound quantization path (a_signed auto, a_range mse,
# w_range mse) and a longer schedule: SBS 100 search + 100 QAT batches of 64. One process per target (the 0.5 one ran
# with --phases sbs-lat,w4a4,ptq and was stopped after its SBS entry); the controls: run_controls.sh (100 QAT batches).
cd "$(dirname "$0")/../../../.."
T="$1"; S="${2:-0}"; O=search/results/sbs/long/t$T; [ "$S" = 0 ] || O=$O/s$S
mkdir -p $O; [ -f $O/costs.db ] || cp search/results/sbs/gate_step/controls/costs.db $O/costs.db
env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py \
  --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 \
  --w-range mse --phases sbs-lat --targets "$T" --bops-targets '' --seeds "$S" \
  --val-limit 2000 --eval-limit 1000 --out $O --figure $O/sbs_bitmap.png > $O/bench.log 2>&1
