#!/usr/bin/env bash
# Synchronous rounds against asynchronous buffered aggregation (FedBuff) on
# the same fleet (docs/results.md, "Asynchronous rounds"): Fashion-MNIST,
# 100 check-in devices each online 30% of the time (one-minute slots,
# availability slots:0.3:60), compute speeds spread lognormal(1), 2NN, E=2.
#   sync:  10 updates per round (over-selection 1.3, selection window 5 s;
#          sync-w2: the same with a 2 s window)
#   async: a buffer of K = 10, at most 20 devices training, staleness <= 10
# Both run ROUNDS rounds (async: versions) of 10 updates, then async goes on
# for half as many again. Prints each run's accuracy and wall-clock time,
# and when each first reached a synchronous run's final accuracy.
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
run sync-w2 --rounds "$rounds" --clients-per-round 10 --selection-window 2
run async --rounds $((rounds * 3 / 2)) --async-buffer 10
/usr/bin/python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
def load(name):
    acc = {int(r["round"]): float(r["test_accuracy"]) for r in csv.DictReader(open(f"{out}/{name}/metrics.csv"))}
    t = {int(r["round"]): float(r["elapsed_seconds"]) for r in csv.DictReader(open(f"{out}/{name}/timing.csv"))}
    return [(r, acc[r], t[r]) for r in sorted(acc) if r in t]
runs = {n: load(n) for n in ["sync", "sync-w2", "async"]}
def first(rows, target):
    return next(((r, t) for r, a, t in rows if a >= target), None)
print("\n| run | rounds | final accuracy | wall clock | rounds/min |")
print("| --- | --- | --- | --- | --- |")
for n, rows in runs.items():
    r, a, t = rows[-1]
    print(f"| {n} | {r} | {100 * a:.2f}% | {t:.1f} s | {60 * r / t:.1f} |")
print("\n| target (a synchronous run's final accuracy) | sync reached it | async reached it | async faster by |")
print("| --- | --- | --- | --- |")
for n in ["sync", "sync-w2"]:
    target = runs[n][-1][1]
    s, a = first(runs[n], target), first(runs["async"], target)
    print(f"| {n}: {100 * target:.2f}% | {s[1]:.1f} s (round {s[0]}) | "
          + (f"{a[1]:.1f} s (version {a[0]}) | {s[1] / a[1]:.2f}x |" if a else "never | - |"))
PY
