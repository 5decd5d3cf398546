"""Attack cost against the compute floor and against the published code's style.

    python benchmarks/attack_floor.py [--batch 128] [--repeats 7] [--smoke]

In one run, interleaved so machine noise hits all three alike, on a batch of 3x32x32 inputs
with the small CNN of the FAT/GAIRAT code (models/small_cnn.py: four 3x3 convolutions 32-32-64-64,
two max-pools, fully connected 200-200-10), K = 10 (median of the repeats):
  floor      K forward passes + K input-only backward passes, nothing else;
  compiled   the attack generated from specs/gairat.adv (PGD-10, kappa, projection, bookkeeping);
  published  the official GAIRAT style: a per-sample Python loop for kappa and
             `loss.backward()` accumulating parameter gradients it never uses.
Prints a Markdown table; docs/benchmarks.md records it with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


class SmallCNN(torch.nn.Module):
    """The published repos' SmallCNN architecture, for 3-channel 32x32 inputs."""

    def __init__(self, channels: int = 3, classes: int = 10):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 5 * 5, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def floor(model, x, y, K):
    x_adv = x.clone()
    for _ in range(K):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach()
    return grad


def published_style(model, data, target, eps, alpha, K):
    """GA_PGD as the official GAIRAT attack_generator.py writes it (re-typed for timing)."""
    model.eval()
    kappa = torch.zeros(len(data))
    x_adv = data.detach() + torch.from_numpy(np.random.uniform(-eps, eps, data.shape)).float()
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
    for _ in range(K):
        x_adv.requires_grad_()
        output = model(x_adv)
        predict = output.max(1, keepdim=True)[1]
        for p in range(len(x_adv)):  # one host sync per sample on a GPU
            if predict[p] == target[p]:
                kappa[p] += 1
        model.zero_grad()
        loss_adv = torch.nn.CrossEntropyLoss(reduction="mean")(output, target)
        loss_adv.backward()  # parameter gradients too, never used
        eta = alpha * x_adv.grad.sign()
        x_adv = x_adv.detach() + eta
        x_adv = torch.min(torch.max(x_adv, data - eps), data + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv, kappa


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.repeats = 8, 1

    import advc

    torch.manual_seed(0)
    np.random.seed(0)
    prog = advc.load(ROOT / "specs" / "gairat.adv")
    K, eps, alpha = prog.module.STEPS, prog.module.EPS, prog.module.STEP_SIZE
    model = SmallCNN()
    model.eval()
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))

    runs = {
        "floor": lambda: floor(model, x, y, K),
        "compiled": lambda: prog.attack(model, x, y, epoch=0),
        "published": lambda: published_style(model, x, y, eps, alpha, K),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"batch {args.batch} x 3x32x32, published SmallCNN, K = {K}, median of {args.repeats}\n")
    print("| attack | median time (ms) | ratio |")
    print("|---|---|---|")
    print(f"| floor (K fwd + input-only bwd) | {med['floor'] * 1e3:.1f} | 1.00 |")
    print(f"| compiled gairat attack | {med['compiled'] * 1e3:.1f} | compiled/floor = {med['compiled'] / med['floor']:.3f} |")
    print(f"| published style | {med['published'] * 1e3:.1f} | published/compiled = "
          f"{med['published'] / med['compiled']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
