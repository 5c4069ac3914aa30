#!/usr/bin/env bash
# The hospital example from a fresh Debian 12 machine: the Wisconsin
# breast-cancer records (python3-sklearn's CSV) split across 5 hospitals
# with skewed class balance (Dirichlet 0.5), a small MLP made with
# python3-torch, record-level DP (DP-SGD on every hospital, epsilon budget
# 10), against the same MLP trained centrally on the union for the same
# epochs. Usage: bash scripts/examples/hospital.sh [--seed N]. Results:
# runs/hospital-dp/ and runs/hospital-central/ (metrics.csv, summary.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
F=build/cli/flotilla
/usr/bin/python3 scripts/make_models.py build/models tabular_mlp >/dev/null
BC=/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv
common=(--model-path build/models/tabular_mlp.pt --data "csv:$BC" --csv-skip-rows 1 --clients 5
        --partition dirichlet:0.5 --rounds 10 --epochs 2 --batch 16 "$@")
echo "== 5 hospitals, record-level DP (DP-SGD: noise 1.0, clip 1, q 0.1, delta 1e-5, epsilon budget 10)"
$F sim "${common[@]}" --lr 0.2 --dp record --dp-noise 1.0 --dp-clip 1 --dp-sampling-rate 0.1 \
  --dp-delta 1e-5 --dp-epsilon-budget 10 --out runs/hospital-dp
echo "== the same MLP trained centrally on the union of the records (20 epochs, no DP)"
$F sim "${common[@]}" --lr 0.05 --central-epochs 20 --out runs/hospital-central
echo "federated with DP: $(sed -n 's/.*"final_test_accuracy": *\([0-9.]*\).*/\1/p' runs/hospital-dp/summary.json)," \
     "epsilon $(sed -n 's/.*"epsilon_spent": *\([0-9.]*\).*/\1/p' runs/hospital-dp/summary.json);" \
     "central: $(sed -n 's/.*"final_test_accuracy": *\([0-9.]*\).*/\1/p' runs/hospital-central/summary.json)"
