#!/usr/bin/env bash
# Client-level DP (DP-FedAvg, distributed noise) on Fashion-MNIST: 1,000
# clients with Dirichlet(0.5) labels, 100 sampled per round, delta = 1e-6
# (= 1 / clients^2), 100 rounds. The noise multiplier for each epsilon is the
# one flotilla dp gives for q = 0.1 and 100 steps; the budget
# refusal ends each run at its epsilon. Clip norm fixed at 0.5; with
# ADAPTIVE=1 the clip follows the median update norm instead (Andrew et al.).
# Results: runs/dp-client/*/.
set -euo pipefail
cd "$(dirname "$0")/../.."
sim=build/cli/flotilla sim
common=(--clients 1000 --partition dirichlet:0.5 --fraction 0.1 --rounds 100 --epochs 1 --batch 16 --lr 0.05
        --momentum 0.9 --arch 2nn --seed 1 --quiet)
$sim "${common[@]}" --out runs/dp-client/non-private | tail -1
for eps in 2 4 8; do
  z=$(build/cli/flotilla dp --q 0.1 --steps 100 --target-epsilon "$eps" --delta 1e-6 --json |
      sed 's/.*"noise_multiplier": *\([0-9.e+-]*\).*/\1/')
  echo "epsilon $eps: noise multiplier $z"
  if [ "${ADAPTIVE:-0}" = 1 ]; then
    $sim "${common[@]}" --dp client-distributed --dp-noise "$z" --dp-clip 0.5 --dp-adaptive-clip \
      --dp-delta 1e-6 --dp-epsilon-budget "$eps" --out "runs/dp-client/eps$eps" | tail -1
  else
    $sim "${common[@]}" --dp client-distributed --dp-noise "$z" --dp-clip 0.5 \
      --dp-delta 1e-6 --dp-epsilon-budget "$eps" --out "runs/dp-client/eps$eps-fixedclip" | tail -1
  fi
done
