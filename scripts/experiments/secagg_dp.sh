#!/usr/bin/env bash
# Secure aggregation (SecAgg+) with distributed DP against the same run
# without SecAgg, on Fashion-MNIST: the client-level DP setting of
# dp_client_level.sh at epsilon 8 (1,000 clients, Dirichlet(0.5) labels,
# 100 sampled per round, delta 1e-6, 100 rounds, C = 0.5). Both runs add
# the same distributed noise; with SecAgg+ each device clips, adds its share
# of the noise and quantizes to 32-bit integers before masking, and the
# aggregator only ever sees the masked vectors and their sum.
# DROPOUT=0.1 also runs SecAgg+ with 10% of devices vanishing mid-protocol.
# Results: runs/secagg-dp/*/.
set -euo pipefail
cd "$(dirname "$0")/../.."
sim=build/cli/flotilla sim
eps=${EPSILON:-8}
rounds=${ROUNDS:-100}
z=$(build/cli/flotilla dp --q 0.1 --steps "$rounds" --target-epsilon "$eps" --delta 1e-6 --json |
    sed 's/.*"noise_multiplier": *\([0-9.e+-]*\).*/\1/')
echo "epsilon $eps over $rounds rounds: noise multiplier $z"
common=(--clients 1000 --partition dirichlet:0.5 --fraction 0.1 --rounds "$rounds" --epochs 1 --batch 16 --lr 0.05
        --momentum 0.9 --arch 2nn --seed 1 --quiet --dp client-distributed --dp-noise "$z" --dp-clip 0.5
        --dp-delta 1e-6 --dp-epsilon-budget "$eps")
echo "without secure aggregation:"
$sim "${common[@]}" --out runs/secagg-dp/plain | tail -1
echo "with SecAgg+:"
$sim "${common[@]}" --secagg secagg+ --out runs/secagg-dp/secagg | tail -1
if [ -n "${DROPOUT:-}" ]; then
  echo "with SecAgg+ and $DROPOUT of devices dropping out mid-protocol:"
  $sim "${common[@]}" --secagg secagg+ --secagg-dropout "$DROPOUT" --secagg-stage-timeout 5 \
    --out "runs/secagg-dp/secagg-dropout$DROPOUT" | tail -1
fi
