#!/usr/bin/env bash
# The simulator at scale on this machine (docs/results.md, "Fleets of
# 100,000"): 100,000 registered devices on CURVE through the real
# aggregator, logistic regression on Fashion-MNIST, 20 rounds, with 1,000
# and with 10,000 devices per round. The aggregator and the devices run as
# separate processes (flotilla sim serve, flotilla sim shard) so that each
# one's peak memory is measured on its own (/usr/bin/time -v); 10,000 per
# round takes three shards, as one process may not hold the ~30,000 file
# descriptors of its connections. A 10,000-device fleet with the same rounds
# gives the aggregator's memory per registered idle device by difference.
#   bash bench/scale_run.sh [ROUNDS] [OUT] [all|1k|10k]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
out=${2:-runs/scale}
F=build/cli/flotilla
mkdir -p "$out"

# run NAME FLEET PER_ROUND SHARDS [MARGIN] [WINDOW]: prints one table row.
run() {
  local name=$1 fleet=$2 k=$3 shards=$4 margin=${5:-1.5} window=${6:-20} dir="$out/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  local args=(--clients "$fleet" --partition windows:60 --arch logreg --rounds "$rounds" --checkin
              --clients-per-round "$k" --over-selection 1 --checkin-margin "$margin" --selection-window "$window"
              --deadline 300 --epochs 1 --batch 32 --lr 0.05 --request-timeout 300 --out "$dir/run" --log warning)
  local start
  start=$(date +%s.%N)
  /usr/bin/time -v "$F" sim serve "${args[@]}" --endpoint-file "$dir/endpoint" >"$dir/serve.log" 2>&1 &
  local server=$!
  while [ ! -s "$dir/endpoint" ]; do sleep 0.1; done
  local pids=()
  for ((i = 0; i < shards; i++)); do
    /usr/bin/time -v "$F" sim shard --index "$i" --of "$shards" --join "$(cat "$dir/endpoint")" "${args[@]}" \
      --quiet >"$dir/shard$i.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  wait "$server"
  local end
  end=$(date +%s.%N)
  /usr/bin/python3 - "$dir" "$name" "$fleet" "$k" "$shards" "$start" "$end" <<'PY'
import csv, json, re, sys
d, name, fleet, k, shards, start, end = sys.argv[1:8]
def rss(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) / 1024 if m else float("nan")
timing = list(csv.DictReader(open(d + "/run/timing.csv")))
metrics = list(csv.DictReader(open(d + "/run/metrics.csv")))
summary = json.load(open(d + "/run/summary.json"))
rounds = len(metrics)
per_round = [float(r["selection_seconds"]) + float(r["seconds"]) for r in timing]
total = float(end) - float(start)
first = total - sum(per_round)
shard_rss = max(rss(f"{d}/shard{i}.log") for i in range(int(shards)))
print(f"{name:10s} fleet {int(fleet):>7,d}  per round {int(k):>6,d}  rounds {rounds:2d}  "
      f"{60 * rounds / sum(per_round):6.1f} rounds/min  {sum(per_round) / rounds:6.2f} s/round  "
      f"start-to-first {first:5.1f} s  aggregator {rss(d + '/serve.log'):7.1f} MB  "
      f"shard(max of {shards}) {shard_rss:7.1f} MB  final acc {summary['final_test_accuracy']:.4f}")
PY
}

which=${3:-all}
if [ "$which" = all ] || [ "$which" = 1k ]; then
  run 100k-1k 100000 1000 1
  run 10k-1k 10000 1000 1
fi
# 10,000 per round: the aggregator holds a connection per check-in, and a
# process here may open 20,000 files; a margin of 1.1 keeps the check-ins
# of a round near 11,000. Check-ins are the limit there (a few hundred a
# second on two cores), so selection may take up to 120 s.
if [ "$which" = all ] || [ "$which" = 10k ]; then
  run 100k-10k 100000 10000 3 1.1 120
fi
