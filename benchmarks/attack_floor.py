"""Attack cost against the compute floor and against the published code's style.

    python benchmarks/attack_floor.py [--batch 128] [--repeats 11] [--smoke]

In one run, interleaved so machine noise hits all of them alike, on a batch of 3x32x32 inputs
with the small CNN of the FAT/GAIRAT code (models/small_cnn.py: four 3x3 convolutions 32-32-64-64,
two max-pools, fully connected 200-200-10), K = 10 (median of the repeats):
  floor      K forward passes + K input-only backward passes, nothing else;
  compiled   the attack generated from specs/gairat.adv (PGD-10, kappa, projection, bookkeeping);
  published  the official GAIRAT style: a per-sample Python loop for kappa and
             `loss.backward()` accumulating parameter gradients it never uses.
A second table (issue #6, item 1) times the compiled attacks of madry, fat (tau = 0, 1, 2) and
gairat against the same floor. Early-stopped attacks compute only the rows still attacking, so
their floor is the floor of K full steps scaled by the rows actually computed:
floor x result.passes / (K x B). BPs = sum of result.steps (FAT's backward-pass count).
Prints Markdown tables; docs/benchmarks.md records them with the command and the machine.
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


def replayed_floor(model, x, y, rows):
    """The floor on exactly the rows an early-stopped attack computed: rows[t] at step t."""
    for n in rows:
        xa = x[:n].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xa), y[:n], reduction="sum")
        torch.autograd.grad(loss, xa)


def rows_per_step(steps, K):
    """Rows computed at each step: a sample is computed at step t iff it moved at all t before."""
    rows = [int((steps >= t).sum()) for t in range(K)]
    return [n for n in rows if n > 0]


def count_survivors(predict, target, kappa):
    """GA_PGD's per-sample loop: kappa (a host tensor) counts the samples still classified
    correctly. On a GPU every `predict[p] == target[p]` is one kernel and one host sync."""
    for p in range(len(predict)):
        if predict[p] == target[p]:
            kappa[p] += 1


def published_style(model, data, target, eps, alpha, K):
    """GA_PGD as the official GAIRAT attack_generator.py writes it (re-typed for timing).

    Device placement as there: kappa stays on the host, the numpy start noise is copied to the
    data's device (`.cuda()` there; a no-op on the CPU)."""
    model.eval()
    kappa = torch.zeros(len(data))
    noise = torch.from_numpy(np.random.uniform(-eps, eps, data.shape)).float().to(data.device)
    x_adv = data.detach() + noise
    x_adv = torch.clamp(x_adv, 0.0, 1.0)
    for _ in range(K):
        x_adv.requires_grad_()
        output = model(x_adv)
        predict = output.max(1, keepdim=True)[1]
        count_survivors(predict, target, kappa)
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

    progs = {
        "madry": advc.load(ROOT / "specs" / "madry.adv"),
        "fat tau=0": advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": 0}),
        "fat tau=1": advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": 1}),
        "fat tau=2": advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": 2}),
        # diagnostic: FAT's per-step noise draw (full batch, then indexed) switched off
        "fat tau=0 noise=0": advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": 0, "attack.noise": 0}),
    }
    last = {}
    passes = {}

    def attack_of(name, p):
        def go():
            last[name] = p.attack(model, x, y, epoch=0)
            passes.setdefault(name, []).append(last[name].passes)
        return go

    runs = {
        "floor": lambda: floor(model, x, y, K),
        "compiled": attack_of("gairat", prog),
        "published": lambda: published_style(model, x, y, eps, alpha, K),
    }
    for name, p in progs.items():
        assert p.module.STEPS == K
        runs[name] = attack_of(name, p)
    for fn in runs.values():  # warm-up
        fn()
    replay = {}
    for name in ["fat tau=0", "fat tau=1", "fat tau=2", "fat tau=0 noise=0"]:  # row counts of the warm-up attack
        replay[name] = rows_per_step(last[name].steps, K)
        runs["floor@" + name] = lambda rows=replay[name]: replayed_floor(model, x, y, rows)
    passes.clear()
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
    print("\nEvery compiled objective against the floor (issue #6, item 1): the same batch, untrained "
          "model, random labels; rows = result.passes, BPs = sum(result.steps)\n")
    print("| objective | median time (ms) | rows computed (median, of K x B) | BPs (last run) "
          "| floor x passes/(K x B) (ms) | compiled/that | replayed floor (ms) | compiled/replayed |")
    print("|---|---|---|---|---|---|---|---|")
    full = K * args.batch
    for name in ["madry", "fat tau=0", "fat tau=1", "fat tau=2", "gairat", "fat tau=0 noise=0"]:
        res = last[name]
        key = "compiled" if name == "gairat" else name
        rows = statistics.median(passes[key if name != "gairat" else "gairat"])
        scaled = med["floor"] * rows / full
        if name in replay:
            rep = med["floor@" + name]
            rep_cells = f"{rep * 1e3:.1f} ({'+'.join(map(str, replay[name]))} rows) | {med[key] / rep:.3f}"
        else:
            rep_cells = "= floor | = compiled/floor"
        print(f"| {name} | {med[key] * 1e3:.1f} | {rows:g} / {full} | {int(res.steps.sum())} "
              f"| {scaled * 1e3:.1f} | {med[key] / scaled:.3f} | {rep_cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
