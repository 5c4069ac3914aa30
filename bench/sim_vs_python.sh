#!/usr/bin/env bash
# Flotilla's simulator against the same FedAvg federation written as a plain
# Python loop (bench/fedavg_baseline.py, python3-torch), and against bare
# LibTorch training of the same examples (build/bench/bare_rounds_bench: the
# same devices' examples, E local epochs each on the same threads, a
# weighted mean; no sockets, no store, no selection, no evaluation), all in
# the same run. Flotilla runs a check-in fleet through the real aggregator,
# CURVE-encrypted ZeroMQ, signed models and the RocksDB store; a round is
# selection (waiting for check-ins) + training and reporting + merging
# (with the evaluation on the 10,000 test images, as the Python loop's).
# Flotilla runs twice: evaluating every round (as the Python loop does), and
# with --eval-every ROUNDS (only the last round's model is evaluated, and
# the last round is left out of the mean: bare training has no evaluation).
# The overhead is against the second run.
#
# WORKLOAD is one of:
#   logreg  logistic regression, a fleet of 1,000 devices of 60 examples
#           (windows:60), E=1, B=32, lr 0.05; 10 / 100 / 1,000 per round
#   2nn     the FedAvg paper's 2NN (199,210 parameters), 100 devices of 600
#           examples (iid), E=5, B=10, lr 0.05; 10 and 50 per round
#   cnn     the FedAvg paper's CNN (1,663,370 parameters), 100 devices of 600
#           examples (iid), E=5, B=10, lr 0.05; 10 per round
# Prints seconds per round (mean of rounds 2..ROUNDS, after warm-up), the
# ratio to the Python loop, the overhead over bare training (the part of a
# round that is not training), and Flotilla's time to its first round.
# Usage: bash bench/sim_vs_python.sh [ROUNDS=5] [WORKLOAD=logreg]   (after a build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
workload=${2:-logreg}
case "$workload" in
  logreg) arch=logreg fleet=1000 partition=windows:60 epochs=1 batch=32 per_round="10 100 1000" ;;
  2nn) arch=2nn fleet=100 partition=iid epochs=5 batch=10 per_round="10 50" ;;
  cnn) arch=cnn fleet=100 partition=iid epochs=5 batch=10 per_round="10" ;;
  *) echo "usage: bash bench/sim_vs_python.sh [ROUNDS=5] [logreg|2nn|cnn]" >&2; exit 2 ;;
esac
lr=0.05
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "$workload: $fleet devices ($partition), E=$epochs, B=$batch, lr $lr, $rounds rounds"
printf '%-10s %12s %12s %12s %8s %12s %9s %12s\n' "per round" "python s" "bare s" "flotilla s" "vs py" "no eval s" \
  "overhead" "to round 1"
for k in $per_round; do
  py=$(/usr/bin/python3 bench/fedavg_baseline.py --arch $arch --fleet $fleet --per-round $k --rounds "$rounds" \
        --epochs $epochs --batch $batch --lr $lr | tail -1)
  bare=$(build/bench/bare_rounds_bench $fleet $k "$rounds" 0 $arch $partition $epochs $batch $lr | tail -1)
  for every in 1 "$rounds"; do
    build/cli/flotilla sim --arch $arch --clients $fleet --partition $partition --checkin --clients-per-round $k \
      --over-selection 1 --selection-window 5 --min-clients $k --rounds "$rounds" --epochs $epochs --batch $batch \
      --lr $lr --eval-every "$every" --out "$out/k$k-e$every" --log warning --quiet >/dev/null
  done
  /usr/bin/python3 - "$py" "$bare" "$out/k$k-e1" "$out/k$k-e$rounds" "$k" <<'PY'
import csv, json, sys
py, bare = json.loads(sys.argv[1]), json.loads(sys.argv[2])

def per_round(d, skip_last):
    rows = list(csv.DictReader(open(d + "/timing.csv")))
    # A round's wall time: from the previous round's end to its own
    # (selection for the next round opens when a round closes, so its
    # waiting overlaps the merge and evaluation: adding the phases would
    # count those twice).
    ends = [float(r["elapsed_seconds"]) for r in rows]
    later = [b - a for a, b in zip(ends, ends[1:])]
    if skip_last and len(later) > 1:
        later = later[:-1]  # the only evaluated round
    if not later:
        later = [float(rows[0]["selection_seconds"]) + float(rows[0]["seconds"])]
    startup = ends[0] - float(rows[0]["selection_seconds"]) - float(rows[0]["seconds"])
    return sum(later) / len(later), startup, rows

flotilla, startup, rows = per_round(sys.argv[3], False)
plain, _, plain_rows = per_round(sys.argv[4], True)
python, baseline = py["seconds_per_round"], bare["seconds_per_round"]
print("%-10s %12.3f %12.3f %12.3f %7.2fx %12.3f %8.1f%% %11.1fs" % (sys.argv[5], python, baseline, flotilla,
      flotilla / python, plain, 100 * (plain - baseline) / plain, startup))
# Where Flotilla's round goes (rounds 2..): waiting for check-ins (which
# overlaps the previous round's merging), training and reporting, merging
# (with the evaluation on the test set).
n = max(len(rows) - 1, 1)
part = lambda key: sum(float(r[key]) for r in rows[1:] or rows) / n
print("%-10s   evaluating every round: %.3f s waiting for check-ins (overlapping the merge), %.3f s training and "
      "reporting (%.1f%% over bare training), %.3f s merging and evaluating; not training: %.1f%% of the round"
      % ("", part("selection_seconds"), part("train_seconds"), 100 * (part("train_seconds") - baseline) / baseline,
         part("merge_seconds"), 100 * (flotilla - baseline) / flotilla))
PY
done
