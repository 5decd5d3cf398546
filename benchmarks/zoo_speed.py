"""Seconds per epoch of the zoo's fast objectives against PGD-10 AT, on one model and one data set.

    python benchmarks/zoo_speed.py [--images 512] [--width 16] [--repeats 3] [--smoke]

Free AT's and fast AT's whole point is speed, AWP's cost is its extra passes. This trains one epoch
of each of specs/madry.adv (PGD-10), specs/free_at.adv (m = 8 replays, one backward each),
specs/fast_at.adv (FGSM, one step), specs/awp.adv (PGD-10 + one proxy ascent step) and
specs/trades.adv (PGD-10 on the KL) through `advc run`, on the same random CIFAR-format images
and the same PreAct ResNet-18 (width --width), fp32, no validation, interleaving the objectives
over --repeats rounds; the seconds are those each run logged for its epoch (training only).
Ratios are to madry measured in the same round, then the median over rounds.

"Whole run" multiplies by each spec's own epoch budget (free_at trains 26 passes for its 80000
replays, fast_at 15, awp 200, madry 120): what the objective costs as its paper trains it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ("madry", "free_at", "fast_at", "awp", "trades")


def one_epoch(spec: str, out: Path, data: Path, width: int, batch: int) -> float:
    sets = [f'train.data=cifar10(root = "{data}")', f"train.model=preact_resnet18(width = {width})",
            "train.epochs=1", f"train.batch={batch}", "train.val=0", "train.precision=fp32", "train.augment=false"]
    args = [sys.executable, "-m", "advc", "run", str(ROOT / "specs" / f"{spec}.adv"), "--no-eval", "--quiet",
            "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"advc run {spec} failed:\n{done.stdout}\n{done.stderr}")
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return float(record["seconds"])


def epochs_of(spec: str) -> int:
    from advc.compiler.check import check_file

    return check_file(ROOT / "specs" / f"{spec}.adv").train.epochs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="training images")
    parser.add_argument("--width", type=int, default=16, help="PreAct ResNet-18 width (64 = the paper's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark still runs")
    args = parser.parse_args(argv)
    specs = SPECS
    if args.smoke:  # madry and the one objective with its own loop shape (Free AT's replays)
        args.images, args.width, args.batch, args.repeats, specs = 32, 2, 16, 1, SPECS[:2]
    from advc.runtime.data import write_cifar10_archive

    seconds: dict[str, list[float]] = {s: [] for s in specs}
    ratios: dict[str, list[float]] = {s: [] for s in specs}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_cifar10_archive(tmp / "data", max(args.images // 5, 2))
        for r in range(args.repeats):
            order = specs if r % 2 == 0 else tuple(reversed(specs))  # interleaved, both directions
            got = {s: one_epoch(s, tmp / f"{s}-{r}", tmp / "data", args.width, args.batch) for s in order}
            for s in specs:
                seconds[s].append(got[s])
                ratios[s].append(got[s] / got["madry"])
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
          f"{args.images} random CIFAR-format images, PreAct ResNet-18 width {args.width}, batch {args.batch}, "
          f"{args.repeats} interleaved rounds (medians)\n")
    print("| objective | s / epoch | epoch vs madry | epochs in its spec | whole run vs madry's |")
    print("|---|---|---|---|---|")
    base_epochs = epochs_of("madry")
    for s in specs:
        med, ratio, n = statistics.median(seconds[s]), statistics.median(ratios[s]), epochs_of(s)
        print(f"| {s} | {med:.2f} | {ratio:.2f} | {n} | {ratio * n / base_epochs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
