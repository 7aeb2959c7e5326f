#!/bin/bash
# seed $1: family (batch statistics + table, sorted channels), then the single models from the sorted checkpoint
cd /work/main
S=$1
OUT=search/results/lcs_cifar/tbl_s$S
COMMON="--holdout 5000 --split-seed 0 --train-limit 10000 --val-limit 2000 --test-limit 2000 --epochs 1 --batch 128 --n-samples 3 --grid 7 --shared-convs --init-checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --checkpoint search/checkpoints/resnet20_cifar10_converged.safetensors --norm frozen_bn --lr 0.02 --sort-channels --seed $S"
mkdir -p $OUT
OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_lcs.py --out $OUT $COMMON --train-stats batch --calib-batches 16 --phases family,eval > $OUT/family.log 2>&1 || exit 1
OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_lcs.py --out $OUT $COMMON --phases single --single-widths 0.25,0.5 > $OUT/single_small.log 2>&1 || exit 1
OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python benchmarks/bench_lcs.py --out $OUT $COMMON --phases single --single-widths 1.0 > $OUT/single_1.0.log 2>&1 || exit 1
