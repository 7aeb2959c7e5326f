#!/bin/bash
# seed $1, distill weight $2 (default 1.0), alphas per batch $3 (default 3): the session-6 family (batch statistics +
# table, sorted channels; benchmarks/lcs_table_run.sh) with in-place distillation of the narrow members from alpha = 1.
# Family only: the single models of the same seed are in search/results/lcs_cifar/tbl_s$1 (same split and start).
cd /work/main
S=$1
D=${2:-1.0}
N=${3:-3}
if [ "$D" = "1.0" ]; then OUT=search/results/lcs_cifar/tbl_kd; else OUT=search/results/lcs_cifar/tbl_kd$D; fi
if [ "$N" != "3" ]; then OUT=${OUT}_n$N; fi
OUT=${OUT}_s$S
COMMON="--holdout 5000 --split-seed 0 --train-limit 10000 --val-limit 2000 --test-limit 2000 --epochs 1 --batch 128 --n-samples $N --grid 7 --shared-convs --init-checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --norm frozen_bn --lr 0.02 --sort-channels --seed $S"
mkdir -p $OUT
uptime > $OUT/uptime_start.txt
OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_lcs.py --out $OUT $COMMON --train-stats batch --calib-batches 16 --distill $D --phases family,eval > $OUT/family.log 2>&1 || exit 1
uptime > $OUT/uptime_end.txt
