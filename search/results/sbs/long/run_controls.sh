#!/bin/sh
# The controls of run.sh, one process per control and target: the same path, 100 QAT batches of 64 (as many as SBS's
# fine-tune; SBS also trains during its 100 search batches, so it sees twice the images: the protocol of the earlier
# sections, in SBS's favour). Usage: run_controls.sh TARGET w4a4|ptq [SEED]
cd "$(dirname "$0")/../../../.."
T="$1"; C="$2"; S="${3:-0}"; O=search/results/sbs/long/t$T/$C; [ "$S" = 0 ] || O=search/results/sbs/long/t$T/s$S/$C
mkdir -p $O; [ -f $O/costs.db ] || cp search/results/sbs/gate_step/controls/costs.db $O/costs.db
env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py \
  --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 \
  --w-range mse --phases "$C" --targets "$T" --bops-targets '' --seeds "$S" \
  --val-limit 2000 --eval-limit 1000 --out $O > $O/bench.log 2>&1
