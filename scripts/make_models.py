#!/usr/bin/python3
"""Writes the TorchScript models that the examples and tests federate.

No binary model is committed: this script makes them with Debian's
python3-torch (1.13, the same as the LibTorch that trains them), the way a
data scientist would from a notebook: define a torch.nn.Module, script it,
save it.

Usage: /usr/bin/python3 scripts/make_models.py OUT_DIR [NAME...]
Each model is written to OUT_DIR/NAME.pt; without names, all of them.
"""
import os
import sys

import torch
from torch import nn


class BnCnn(nn.Module):
    """Fashion-MNIST [N,1,28,28] -> 10 logits: conv + BatchNorm + dropout.
    `width` channels in the first convolution (another width makes the
    'wrong model file' of tests)."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


class TabularMlp(nn.Module):
    """Tabular records [N,F] -> `outputs` values: 2 logits (cross-entropy over
    the 30 breast-cancer features), 1 logit (binary cross-entropy) or 1 real
    value (regression, e.g. the 13 Boston housing features)."""

    def __init__(self, features=30, hidden=32, outputs=2):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x.flatten(1)))))


class BackboneHead(nn.Module):
    """Images [N,1,28,28] -> 10 logits: a convolutional backbone to freeze and
    a head to fine-tune (or keep personal) per device."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.head(self.backbone(x).flatten(1))


def pretrained_backbone_head():
    """BackboneHead trained for one epoch on 12,000 Fashion-MNIST images (a
    stand-in for a vendor's pretrained network): the factory example freezes
    its backbone and fine-tunes the head on other images."""
    import gzip
    import numpy as np
    root = "/usr/share/datasets/fashion-mnist"
    with gzip.open(root + "/train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:12000]
    with gzip.open(root + "/train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:12000]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(labels.astype(np.int64))
    model = BackboneHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(0, len(x), 32):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
        opt.step()
    return model


MODELS = {
    "bn_cnn": BnCnn,
    "tabular_mlp": TabularMlp,
    "tabular_logit": lambda: TabularMlp(outputs=1),
    "tabular_regressor": lambda: TabularMlp(features=13, outputs=1),
    "backbone_head": BackboneHead,
    "other_cnn": lambda: BnCnn(width=12),
    "backbone_head_pretrained": pretrained_backbone_head,
}
# Made only when named (they train for a while).
ON_REQUEST = {"backbone_head_pretrained"}


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        print("models:", ", ".join(MODELS))
        return 0 if len(argv) >= 2 else 2
    out = argv[1]
    names = argv[2:] or [n for n in MODELS if n not in ON_REQUEST]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print("make_models: unknown model(s) %s; known: %s" % (", ".join(unknown), ", ".join(MODELS)),
              file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    for name in names:
        torch.manual_seed(1)  # the same file every time
        module = torch.jit.script(MODELS[name]().eval())
        path = os.path.join(out, name + ".pt")
        torch.jit.save(module, path)
        print("make_models: wrote %s (%d parameters)" % (path, sum(p.numel() for p in module.parameters())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
