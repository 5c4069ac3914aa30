#!/usr/bin/env bash
# Flotilla's simulator against the same FedAvg federation written as a plain
# Python loop (bench/fedavg_baseline.py, python3-torch), and against bare
# LibTorch training of the same examples (build/bench/bare_rounds_bench: the
# same devices' windows, one local epoch each on the same threads, a
# weighted mean; no sockets, no store, no selection), all in the same run:
# logistic regression on Fashion-MNIST, a fleet of 1,000 devices of 60
# examples, 10 / 100 / 1,000 devices per round, E=1, B=32, lr 0.05, ROUNDS
# rounds. Flotilla runs a check-in fleet through the real aggregator,
# CURVE-encrypted ZeroMQ, signed models and the RocksDB store; a round is
# selection (waiting for check-ins) + training and reporting + merging.
# Prints seconds per round (mean of rounds 2..ROUNDS, after warm-up), the
# ratio to the Python loop, the overhead over bare training (the part of a
# round that is not training), and Flotilla's time to its first round.
# Usage: bash bench/sim_vs_python.sh [ROUNDS=5]   (after a build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
fleet=1000
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf '%-10s %12s %12s %12s %8s %9s %12s\n' "per round" "python s" "bare s" "flotilla s" "vs py" "overhead" "to round 1"
for k in 10 100 1000; do
  py=$(/usr/bin/python3 bench/fedavg_baseline.py --fleet $fleet --per-round $k --rounds "$rounds" \
        --epochs 1 --batch 32 --lr 0.05 | tail -1)
  bare=$(build/bench/bare_rounds_bench $fleet $k "$rounds" | tail -1)
  build/cli/flotilla sim --arch logreg --clients $fleet --partition windows:60 --checkin --clients-per-round $k \
    --over-selection 1 --selection-window 5 --rounds "$rounds" --epochs 1 --batch 32 --lr 0.05 \
    --out "$out/k$k" --log warning --quiet >/dev/null
  /usr/bin/python3 - "$py" "$bare" "$out/k$k" "$k" <<'PY'
import csv, json, sys
py, bare = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = list(csv.DictReader(open(sys.argv[3] + "/timing.csv")))
summary = json.load(open(sys.argv[3] + "/summary.json"))
full = [float(r["selection_seconds"]) + float(r["seconds"]) for r in rows]
later = full[1:] or full
flotilla = sum(later) / len(later)
startup = summary["seconds"] - sum(full)
python, baseline = py["seconds_per_round"], bare["seconds_per_round"]
print("%-10s %12.3f %12.3f %12.3f %7.2fx %8.1f%% %11.1fs" % (sys.argv[4], python, baseline, flotilla, flotilla / python,
      100 * (flotilla - baseline) / flotilla, startup))
PY
done
