#!/usr/bin/python3
"""FedAvg as a plain Python loop with python3-torch: the baseline Flotilla's
simulator is compared against (issue 13). No network, no encryption, no
store, no signatures: just the training and the weighted mean.

The federation: a fleet of --fleet devices holding IID shares of the
Fashion-MNIST training split (a seeded permutation dealt in near-equal
slices, as Flotilla's "iid" partition does), --per-round of them sampled
each round, each running --epochs local epochs of SGD (batch --batch, lr
--lr) from the global model, the new global model the example-weighted mean
of theirs. The model is logistic regression 784-10 (Flotilla's "logreg")
unless --arch 2nn or cnn. Prints one line per round and a final JSON line with
seconds per round (training only, and total).

Usage: /usr/bin/python3 bench/fedavg_baseline.py [--fleet N] [--per-round K] [--rounds R]
       [--epochs E] [--batch B] [--lr LR] [--arch logreg|2nn|cnn] [--threads T] [--seed S]
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # the standardization Flotilla's reader applies


def read_idx(path, kind):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if kind == "images":
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        x = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
        return torch.from_numpy(((x.astype(np.float32) / 255.0) - MEAN) / STD)
    n = int.from_bytes(raw[4:8], "big")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=8, count=n).astype(np.int64))


def load(split, limit):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(DATA, prefix + "-images-idx3-ubyte.gz"), "images")
    y = read_idx(os.path.join(DATA, prefix + "-labels-idx1-ubyte.gz"), "labels")
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def make_model(arch):
    if arch == "cnn":  # the FedAvg paper's CNN, as Flotilla's "cnn" (1,663,370 parameters)
        return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10))
    if arch == "2nn":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                             nn.Linear(200, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleet", type=int, default=1000, help="devices holding data")
    p.add_argument("--per-round", type=int, default=100, help="devices sampled per round")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--arch", choices=["logreg", "2nn", "cnn"], default="logreg")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    p.add_argument("--train-limit", type=int, default=0, help="use the first N training examples (0: all)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv[1:])
    if not 0 < args.per_round <= args.fleet:
        p.error("--per-round must be in (0, --fleet]")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    x, y = load("train", args.train_limit)
    tx, ty = load("test", 0)
    order = rng.permutation(len(y))
    shares = np.array_split(order, args.fleet)
    if min(len(s) for s in shares) == 0:
        p.error("the fleet is larger than the data: some device would hold nothing")

    model = make_model(args.arch)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    train_seconds = total_seconds = 0.0
    start = time.perf_counter()
    for r in range(1, args.rounds + 1):
        round_start = time.perf_counter()
        chosen = rng.choice(args.fleet, size=args.per_round, replace=False)
        summed = {k: torch.zeros_like(v) for k, v in global_state.items()}
        examples = 0
        trained = 0.0
        for d in chosen:
            idx = torch.from_numpy(shares[d])
            model.load_state_dict(global_state)
            opt = torch.optim.SGD(model.parameters(), lr=args.lr)
            t0 = time.perf_counter()
            for _ in range(args.epochs):
                perm = idx[torch.randperm(len(idx))]
                for b in range(0, len(perm), args.batch):
                    batch = perm[b:b + args.batch]
                    opt.zero_grad()
                    loss_fn(model(x[batch]), y[batch]).backward()
                    opt.step()
            trained += time.perf_counter() - t0
            for k, v in model.state_dict().items():
                summed[k] += v * len(idx)
            examples += len(idx)
        global_state = {k: v / examples for k, v in summed.items()}
        model.load_state_dict(global_state)
        with torch.no_grad():
            acc = (model(tx).argmax(1) == ty).float().mean().item()
        seconds = time.perf_counter() - round_start
        train_seconds += trained
        total_seconds += seconds
        print("round %3d/%d  devices %d  test_acc %.4f  %.3fs (training %.3fs)" %
              (r, args.rounds, args.per_round, acc, seconds, trained), flush=True)
    print(json.dumps({
        "baseline": "python3-torch FedAvg loop", "arch": args.arch, "fleet": args.fleet,
        "per_round": args.per_round, "rounds": args.rounds, "epochs": args.epochs, "batch": args.batch,
        "final_test_accuracy": acc, "seconds_per_round": total_seconds / args.rounds,
        "training_seconds_per_round": train_seconds / args.rounds,
        "wall_seconds": time.perf_counter() - start,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
