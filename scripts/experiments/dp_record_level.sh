#!/usr/bin/env bash
# Record-level DP (DP-SGD on every device) on Fashion-MNIST: 10 silos with
# 6,000 records each, delta = 1e-5, 15 rounds of one local epoch with
# sampling rate q = 0.01 (expected batch 60), i.e. 1,500 DP-SGD steps per
# silo. The noise multiplier for each epsilon comes from flotilla dp.
# Results: runs/dp-record/*/.
set -euo pipefail
cd "$(dirname "$0")/../.."
sim=build/cli/flotilla sim
common=(--clients 10 --partition iid --fraction 1 --rounds 15 --epochs 1 --batch 60 --momentum 0.5
        --arch 2nn --seed 1 --quiet)
$sim "${common[@]}" --lr 0.05 --out runs/dp-record/non-private | tail -1
for eps in 1 3 8; do
  z=$(build/cli/flotilla dp --q 0.01 --steps 1500 --target-epsilon "$eps" --delta 1e-5 --json |
      sed 's/.*"noise_multiplier": *\([0-9.e+-]*\).*/\1/')
  echo "epsilon $eps: noise multiplier $z"
  $sim "${common[@]}" --lr 0.5 --dp record --dp-noise "$z" --dp-clip 1.0 --dp-sampling-rate 0.01 \
    --dp-delta 1e-5 --dp-epsilon-budget "$eps" --out "runs/dp-record/eps$eps" | tail -1
done
