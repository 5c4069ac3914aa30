#!/usr/bin/env bash
# The bring-your-own-model examples over several seeds, each beside the same
# model trained centrally on the union of the devices' data for the same
# number of epochs (rounds x local epochs). Prints one line per run and a
# mean and spread per setting. Usage: scripts/experiments/byo_examples.sh [SEEDS=3]
# Results: runs/byo/<setting>-seed<N>/summary.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-3}
sim=(build/cli/flotilla sim --quiet)
models=build/models
/usr/bin/python3 scripts/make_models.py "$models" tabular_mlp tabular_logit backbone_head backbone_head_pretrained \
  >/dev/null
[ -d runs/digits ] || /usr/bin/python3 scripts/make_image_folder.py runs/digits >/dev/null
BC=/usr/lib/python3/dist-packages/sklearn/datasets/data/breast_cancer.csv
hospital=(--data "csv:$BC" --csv-skip-rows 1 --clients 5 --partition dirichlet:0.5 --rounds 10 --epochs 2
          --batch 16)
factory=(--data images:runs/digits --clients 5 --partition dirichlet:1 --rounds 10 --epochs 2 --batch 16
         --lr 0.05)

declare -A settings=(
  [hospital]="--model-path $models/tabular_mlp.pt --lr 0.05"
  [hospital-bce-adam]="--model-path $models/tabular_logit.pt --loss bce --optimizer adam --lr 0.01"
  [hospital-dp]="--model-path $models/tabular_mlp.pt --lr 0.2 --dp record --dp-noise 1.0 --dp-clip 1
                 --dp-sampling-rate 0.1 --dp-delta 1e-5 --dp-epsilon-budget 10"
  [factory]="--model-path $models/backbone_head_pretrained.pt --freeze backbone.*"
)
order=(hospital hospital-bce-adam hospital-dp factory)

for name in "${order[@]}"; do
  base=("${hospital[@]}")
  [[ $name == factory* ]] && base=("${factory[@]}")
  # shellcheck disable=SC2206
  extra=(${settings[$name]})
  for mode in federated central; do
    # DP-SGD's central baseline is the non-private one (same epochs).
    [[ $name == hospital-dp && $mode == central ]] && continue
    accs=()
    for seed in $(seq 1 "$seeds"); do
      out=runs/byo/$name-$mode-seed$seed
      args=("${base[@]}" "${extra[@]}" --seed "$seed" --out "$out")
      [ "$mode" = central ] && args+=(--central-epochs 20)
      "${sim[@]}" "${args[@]}" >/dev/null
      acc=$(sed -n 's/.*"final_test_accuracy": *\([0-9.]*\).*/\1/p' "$out/summary.json")
      auc=$(sed -n 's/.*"final_test_auc": *\([0-9.]*\).*/\1/p' "$out/summary.json")
      accs+=("$acc")
      echo "$name $mode seed $seed: accuracy $acc${auc:+ auc $auc}"
    done
    printf '%s\n' "${accs[@]}" | awk -v n="$name $mode" \
      '{s+=$1; q+=$1*$1; c++} END {m=s/c; printf "%s: mean %.2f%% (sd %.2f pp) over %d seeds\n", n, 100*m, 100*sqrt(q/c-m*m), c}'
  done
done
