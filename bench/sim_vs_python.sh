#!/usr/bin/env bash
# Flotilla's simulator against the same FedAvg federation written as a plain
# Python loop (bench/fedavg_baseline.py, python3-torch), measured in the same
# run: logistic regression on Fashion-MNIST, a fleet of 1,000 devices with
# IID shares (60 examples each), 10 / 100 / 1,000 devices per round, E=1,
# B=32, lr 0.05, 5 rounds. Prints seconds per round (mean of rounds 2..5,
# after warm-up) for both, their ratio, and Flotilla's time to its first
# round (keys, sockets, CURVE handshakes, Hello for every device).
# Flotilla's rounds go through the real aggregator, CURVE-encrypted ZeroMQ,
# signed models and the RocksDB store; the Python loop has none of that.
# Usage: bash bench/sim_vs_python.sh [ROUNDS=5]   (after a build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
fleet=1000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-10s %14s %14s %8s %18s\n' "per round" "python s/round" "flotilla s/rnd" "ratio" "flotilla to rnd 1"
for k in 10 100 1000; do
  py=$(/usr/bin/python3 bench/fedavg_baseline.py --fleet $fleet --per-round $k --rounds "$rounds" \
        --epochs 1 --batch 32 --lr 0.05 | tail -1)
  fraction=$(awk -v k=$k -v n=$fleet 'BEGIN { printf "%.4f", k / n }')
  build/cli/flotilla sim --arch logreg --clients $fleet --partition iid --fraction "$fraction" \
    --rounds "$rounds" --epochs 1 --batch 32 --lr 0.05 --test-limit 10000 --out "$out/k$k" --log warning \
    >/dev/null
  /usr/bin/python3 - "$py" "$out/k$k" "$k" <<'PY'
import csv, json, sys
py = json.loads(sys.argv[1])
rows = list(csv.DictReader(open(sys.argv[2] + "/timing.csv")))
summary = json.load(open(sys.argv[2] + "/summary.json"))
later = [float(r["seconds"]) for r in rows[1:]] or [float(rows[0]["seconds"])]
flotilla = sum(later) / len(later)
startup = summary["seconds"] - sum(float(r["seconds"]) for r in rows)
# The Python loop's rounds 2..n, from its own per-round mean (its first round has no setup to speak of).
python = py["seconds_per_round"]
print("%-10s %14.3f %14.3f %7.2fx %17.1fs" % (sys.argv[3], python, flotilla, flotilla / python, startup))
PY
done
