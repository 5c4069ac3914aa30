#!/usr/bin/env bash
# Synchronous rounds against asynchronous buffered aggregation (FedBuff) on
# the same fleet (docs/results.md, "Asynchronous rounds"): Fashion-MNIST,
# 100 check-in devices each online 30% of the time (one-minute slots,
# availability slots:0.3:60), compute speeds spread lognormal(1), 2NN, E=2.
#   sync:  10 updates per round (over-selection 1.3, selection window 5 s)
#   async: a buffer of K = 10, at most 20 devices training, staleness <= 10
# Both run ROUNDS rounds (async: versions) of 10 updates, then async goes on
# for half as many again. Prints each run's accuracy and wall-clock time,
# and when each first reached the synchronous run's final accuracy.
#   bash bench/async.sh [ROUNDS] [OUT] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
out=${2:-runs/async}
seed=${3:-1}
F=build/cli/flotilla
mkdir -p "$out"
common=(--clients 100 --arch 2nn --checkin --availability slots:0.3:60 --speed lognormal:1 --epochs 2
  --deadline 20 --checkin-margin 3 --seed "$seed" --log warning --quiet)
run() {
  local name=$1
  shift
  [ -s "$out/$name/summary.json" ] && return 0
  echo "== $name" >&2
  "$F" sim "${common[@]}" "$@" --out "$out/$name" >"$out/$name.log" 2>&1 || {
    echo "   failed: see $out/$name.log" >&2
    return 1
  }
}
run sync --rounds "$rounds" --clients-per-round 10 --selection-window 5
run async --rounds $((rounds * 3 / 2)) --async-buffer 10
/usr/bin/python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
def load(name):
    acc = {int(r["round"]): float(r["test_accuracy"]) for r in csv.DictReader(open(f"{out}/{name}/metrics.csv"))}
    t = {int(r["round"]): float(r["elapsed_seconds"]) for r in csv.DictReader(open(f"{out}/{name}/timing.csv"))}
    s = json.load(open(f"{out}/{name}/summary.json"))
    return [(r, acc[r], t[r]) for r in sorted(acc) if r in t], s
runs = {n: load(n) for n in ["sync", "async"]}
target = runs["sync"][0][-1][1]
print(f"\ntarget: the synchronous run's final accuracy, {100 * target:.2f}%\n")
print("| run | rounds | final accuracy | wall clock | first reached the target | after | rounds/min |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for n, (rows, s) in runs.items():
    hit = next(((r, t) for r, a, t in rows if a >= target), None)
    last = rows[-1]
    print(f"| {n} | {last[0]} | {100 * last[1]:.2f}% | {last[2]:.1f} s | "
          + (f"round {hit[0]} | {hit[1]:.1f} s" if hit else "never | -")
          + f" | {60 * last[0] / last[2]:.1f} |")
sync_hit = next(t for r, a, t in runs["sync"][0] if a >= target)
async_hit = next((t for r, a, t in runs["async"][0] if a >= target), None)
if async_hit:
    print(f"\nasync reached it in {async_hit:.1f} s, {sync_hit / async_hit:.2f}x faster than sync ({sync_hit:.1f} s)")
else:
    print("\nasync did not reach the target")
PY
