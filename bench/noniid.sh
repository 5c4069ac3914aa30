#!/usr/bin/env bash
# Strategies on non-IID data (docs/results.md, "Strategies on non-IID
# data"): Fashion-MNIST, 100 devices, 10% per round, E=5, B=10, lr 0.05,
# with Dirichlet(0.1) label skew and with 2 label shards per device (the
# FedAvg paper's pathological split), for FedAvg, FedAvgM (beta 0.9, server
# lr 0.1: the same effective step, Hsu et al. 2019), FedProx (mu 0.01) and
# FedAdam (server lr 0.01) and SCAFFOLD. Prints test accuracy every 10 rounds and the
# first round at 70% and 80%, and writes every run under OUT.
#   bash bench/noniid.sh [ROUNDS] [OUT] [ARCH]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-50}
out=${2:-runs/noniid}
arch=${3:-2nn}
F=build/cli/flotilla
mkdir -p "$out"
strategies=(fedavg "fedavgm --server-lr 0.1" fedprox:0.01 fedadam scaffold)
for p in dirichlet:0.1 shards:2; do
  for s in "${strategies[@]}"; do
    read -r strategy extra <<<"$s"
    name="${p}_${strategy}"
    dir="$out/$name"
    [ -s "$dir/summary.json" ] && continue
    echo "== $p / $s" >&2
    # shellcheck disable=SC2086
    "$F" sim --clients 100 --partition "$p" --fraction 0.1 --arch "$arch" --rounds "$rounds" --epochs 5 \
      --batch 10 --lr 0.05 --seed 1 --strategy "$strategy" ${extra:-} --out "$dir" --log warning --quiet \
      >"$out/$name.log" 2>&1 || echo "   failed: see $out/$name.log" >&2
  done
done
/usr/bin/python3 - "$out" "$rounds" <<'PY'
import csv, os, sys
out, rounds = sys.argv[1], int(sys.argv[2])
names = ["fedavg", "fedavgm", "fedprox:0.01", "fedadam", "scaffold"]
marks = list(range(10, rounds + 1, 10))
for p in ["dirichlet:0.1", "shards:2"]:
    print(f"\n{p}\n")
    print("| strategy | " + " | ".join(f"round {m}" for m in marks) + " | best | first 70% | first 80% |")
    print("| --- " * (len(marks) + 4) + "|")
    for n in names:
        path = os.path.join(out, f"{p}_{n}", "metrics.csv")
        if not os.path.exists(path):
            print(f"| {n} | failed |")
            continue
        rows = list(csv.DictReader(open(path)))
        acc = {int(r["round"]): float(r["test_accuracy"]) for r in rows if r.get("test_accuracy")}
        first = lambda t: next((str(k) for k in sorted(acc) if acc[k] >= t), "-")
        cells = [f"{100 * acc[m]:.1f}%" if m in acc else "-" for m in marks]
        best = max(acc.values()) if acc else float("nan")
        print(f"| {n} | " + " | ".join(cells) + f" | {100 * best:.1f}% | {first(0.7)} | {first(0.8)} |")
PY
