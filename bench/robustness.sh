#!/usr/bin/env bash
# Robustness of the strategies to malicious devices (docs/results.md,
# "Robustness to malicious devices"): Fashion-MNIST, 50 devices (IID),
# 20% of them malicious, each attack of sim/attacks.h against each strategy,
# beside every strategy's clean run. Prints a Markdown table of final test
# accuracy and writes every run under OUT. "fedavg unbounded" turns the
# aggregator's update validation norm bound off (--update-norm-bound off),
# "fedavg clip" adds server-side clipping to the median norm.
#   bash bench/robustness.sh [ROUNDS] [OUT] [ARCH]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
out=${2:-runs/robustness}
arch=${3:-logreg}
F=build/cli/flotilla
mkdir -p "$out"
strategies=("fedavg unbounded" fedavg "fedavg clip" median trimmed-mean:0.2 krum:10 multi-krum:10:40 bulyan:10)
attacks=(none sign-flip scale noise lie)
for s in "${strategies[@]}"; do
  for a in "${attacks[@]}"; do
    name="${s// /-}_${a}"
    dir="$out/$name"
    [ -s "$dir/summary.json" ] && continue
    args=(--clients 50 --arch "$arch" --rounds "$rounds" --epochs 1 --batch 32 --lr 0.05 --seed 1
          --out "$dir" --log warning --quiet)
    read -r strategy extra <<<"$s"
    args+=(--strategy "$strategy")
    [ "${extra:-}" = clip ] && args+=(--clip-updates median:1)
    [ "${extra:-}" = unbounded ] && args+=(--update-norm-bound off)
    [ "$a" != none ] && args+=(--malicious 0.2 --attack "$a")
    echo "== $s / $a" >&2
    "$F" sim "${args[@]}" >"$out/$name.log" 2>&1 || echo "   failed: see $out/$name.log" >&2
  done
done
/usr/bin/python3 - "$out" "${attacks[@]}" <<'PY'
import json, os, sys
out, attacks = sys.argv[1], sys.argv[2:]
rows = ["fedavg-unbounded", "fedavg", "fedavg-clip", "median", "trimmed-mean:0.2", "krum:10", "multi-krum:10:40", "bulyan:10"]
def acc(name):
    p = os.path.join(out, name, "summary.json")
    if not os.path.exists(p):
        return None
    return json.load(open(p)).get("final_test_accuracy")
print("| strategy | " + " | ".join("clean" if a == "none" else a for a in attacks) + " | worst drop |")
print("| --- " * (len(attacks) + 2) + "|")
for r in rows:
    vals = [acc(f"{r}_{a}") for a in attacks]
    clean = vals[0]
    cells, drops = [], []
    for a, v in zip(attacks, vals):
        if v is None:
            cells.append("failed")
            continue
        cells.append(f"{100 * v:.1f}%" if a == "none" or clean is None else f"{100 * v:.1f}% ({100 * (v - clean):+.1f})")
        if a != "none" and clean is not None:
            drops.append(100 * (clean - v))
    worst = f"{max(drops):.1f} pp" if drops else "-"
    print(f"| {r} | " + " | ".join(cells) + f" | {worst} |")
PY
