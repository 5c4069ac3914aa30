#!/usr/bin/env bash
# The demo: sets up, builds, then runs a 10-client federation on
# Fashion-MNIST over the real aggregator, wire and clients on loopback.
# Extra arguments are passed to flotilla sim (see build/cli/flotilla sim --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec build/cli/flotilla sim \
  --arch 2nn --clients 10 --partition iid --rounds 30 --fraction 1.0 \
  --epochs 2 --batch 32 --lr 0.02 --momentum 0.9 --seed 1 --out runs/demo "$@"
