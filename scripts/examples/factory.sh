#!/usr/bin/env bash
# The factory example from a fresh Debian 12 machine, as separate processes:
# an aggregator and 5 device daemons (`flotilla client run --config
# device.toml`) fine-tune the head of a pretrained image classifier whose
# backbone is frozen, each on its own share of a folder of images (the 8x8
# digits python3-sklearn ships, written out as PNGs), with federated
# evaluation on each device's held-out images. When the federation ends each
# daemon writes the final verified model as a TorchScript file; the script
# then runs `flotilla client predict` with it, as the device's own inference
# would. Usage: bash scripts/examples/factory.sh. Everything lands in
# runs/factory/ (keys, store, device configs and logs, final models).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
F=$PWD/build/cli/flotilla
out=runs/factory
rm -rf "$out" && mkdir -p "$out/keys"
/usr/bin/python3 scripts/make_models.py build/models backbone_head_pretrained >/dev/null
[ -d runs/digits ] || /usr/bin/python3 scripts/make_image_folder.py runs/digits >/dev/null
model=$PWD/build/models/backbone_head_pretrained.pt
port=$((20000 + RANDOM % 20000))

$F keygen --out "$out/keys" --name aggregator --signing >/dev/null
for i in 0 1 2 3 4; do
  $F keygen --out "$out/keys" --name "press$i" --allowlist "$out/keys/allowlist" >/dev/null
  cat >"$out/press$i.toml" <<TOML
[federation]
name = "factory"
endpoint = "tcp://127.0.0.1:$port"
seed = 1
[keys]
server_key = "$out/keys/aggregator.curve.pub"
model_key = "$out/keys/aggregator.sign.pub"
[model]
path = "$model"
[data]
source = "images:runs/digits"
clients = 5
partition = "dirichlet:1"
held_out_fraction = 0.2
[device]
name = "press$i"
curve_key = "$out/keys/press$i.curve.key"
state_dir = "$out/press$i"
model_out = "$out/press$i-final.pt"
TOML
done

echo "== aggregator on 127.0.0.1:$port: 10 rounds, backbone frozen, federated evaluation on the devices"
$F aggregator --federation factory --endpoint "tcp://127.0.0.1:$port" --store "$out/store" \
  --curve-key "$out/keys/aggregator.curve.key" --signing-key "$out/keys/aggregator.sign.key" \
  --allowlist "$out/keys/allowlist" --model-path "$model" --freeze 'backbone.*' --min-clients 5 \
  --rounds 10 --epochs 2 --batch 16 --lr 0.05 --no-eval --federated-eval --seed 1 2>"$out/aggregator.log" &
agg=$!
pids=()
for i in 0 1 2 3 4; do
  $F client --config "$out/press$i.toml" run --index "$i" >"$out/press$i.log" 2>&1 &
  pids+=($!)
done
wait "$agg"
for p in "${pids[@]}"; do wait "$p"; done
grep -o 'round [0-9]*/10.*federated_acc [0-9.]* on [0-9]* devices. held-out examples' "$out/aggregator.log" || true
tail -n 1 "$out/press0.log"
echo "== the device's own inference with the final model (all of its images)"
$F client predict --model "$out/press0-final.pt" --data images:runs/digits --batch 1
