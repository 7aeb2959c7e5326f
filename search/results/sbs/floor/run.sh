#!/bin/sh
# Floor diagnosis (issue 19, session 5): uniform configurations at full width through SBS's extraction + QAT path.
# plain = the quantizer of the runs before (symmetric signed activations, range = moving max; weights max-abs);
# act   = unsigned codes for post-ReLU inputs + least-error activation ranges (a_signed auto, a_range mse);
# actw  = act + least-error per-channel weight ranges (w_range mse).
cd "$(dirname "$0")/../../../.."
B="env OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_sbs.py --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --steps 60 --targets '' --bops-targets '' --val-limit 2000 --eval-limit 1000"
O=search/results/sbs/floor
case "$1" in
  plain) eval $B --a-signed symmetric --a-range max --w-range max --phases full --full-bits 4/4,2/8 --out $O/plain > $O/plain.log 2>&1 ;;
  act)   eval $B --a-signed auto --a-range mse --w-range max --phases ref,full --full-bits 4/4,2/8 --out $O/act > $O/act.log 2>&1 ;;
  actw)  eval $B --a-signed auto --a-range mse --w-range mse --phases full --full-bits 2/8 --out $O/actw > $O/actw.log 2>&1 ;;
esac
