#!/bin/sh
# Task 3 of session 5 (issue 19): BOP reduction at <= 1 point against uniform W8A8, and SBS vs uniform quantization at
# equal BOPs. The sound quantization path (a_signed auto, a_range mse, w_range mse); fine-tune lr 0.002 (lr 0.01
# cost W8A8 and W4A4 0.25-0.45 points on validation in 60 batches: search/results/sbs/floor/).
#   sbs:     SBS with cost = "bops" at 0.25 and 0.125 of W8A8's BOPs, 100 search + 100 QAT batches of 64
#   uniform: uniform W4A4 at full width (the equal-BOPs control of 0.25), 100 QAT batches of 64 (stopped for time in
#            session 5; docs/sbs.md quotes W4A4 post-training from search/results/sbs/floor/act)
cd "$(dirname "$0")/../../../.."
O=search/results/sbs/bops/$1; mkdir -p $O
B="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 100 --ft-steps 100 --control-ft-steps 200 --finetune-lr 0.002 --w-range mse --targets '' --val-limit 2000 --eval-limit 1000 --out $O"
case "$1" in
  sbs)     eval $B --phases sbs-bops --bops-targets 0.25,0.125 > $O/bench.log 2>&1 ;;
  uniform) eval $B --phases full --full-bits 4/4 --control-ft-steps 100 --bops-targets= > $O/bench.log 2>&1 ;;
esac
# ptq: uniform configurations at full width with no fine-tune (what quantization alone costs), the sound path
[ "$1" = ptq ] && eval $B --phases full --full-bits 4/3,3/4,3/3 --ft-steps 0 --control-ft-steps 0 --bops-targets= > $O/bench.log 2>&1
