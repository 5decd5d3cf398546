"""Wall time of training epochs through `advc run`: the quickstart, and CIFAR-format data.

    python benchmarks/epoch_time.py [--cifar-images 512] [--smoke]

1. The quickstart spec (digits, small CNN, GAIR-FAT), 3 epochs: median seconds per epoch.
2. PGD-10 adversarial training (madry.adv's objective) of PreAct ResNet-18 on random images
   written in the real CIFAR-10 pickle layout, read back through advc's loader: one epoch.
Both run as a user runs them (`python -m advc run ... --no-eval`); the seconds are the ones the
run logged per epoch in metrics.jsonl (training only, not start-up or evaluation).
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


def run(spec: Path, out: Path, *overrides: str) -> list[dict]:
    args = [sys.executable, "-m", "advc", "run", str(spec), "--no-eval", "--quiet", "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"advc run failed:\n{done.stdout}\n{done.stderr}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-images", type=int, default=512, help="training images (test: 1/5 as many)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark still runs")
    args = parser.parse_args(argv)
    width = 8 if args.smoke else 64
    n = 32 if args.smoke else args.cifar_images

    from advc.compiler.check import check_file
    from advc.runtime.data import load_dataset, write_cifar10_archive
    from advc.runtime.loop import validation_size

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        quick = run(ROOT / "specs" / "quickstart.adv", tmp / "quick", f"train.epochs={1 if args.smoke else 3}")
        per_epoch = statistics.median(m["seconds"] for m in quick)
        n_train = int(load_dataset("digits").x_train.shape[0])
        quick_images = n_train - validation_size(check_file(ROOT / "specs" / "quickstart.adv").train.val, n_train)
        write_cifar10_archive(tmp / "data", max(n // 5, 2))
        spec = tmp / "cifar.adv"
        spec.write_text(
            f'objective cifar_pgd10 extends madry {{\n}}\n\ntrain {{\n    data    cifar10(root = "{tmp / "data"}")\n'
            f"    model   preact_resnet18(width = {width})\n    epochs  1\n    val     0\n}}\n"
        )
        # the spec extends specs/madry.adv: copy it next to the temporary spec
        (tmp / "madry.adv").write_text((ROOT / "specs" / "madry.adv").read_text())
        cifar = run(spec, tmp / "cifar")
    images = max(n // 5, 2) * 5
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}\n")
    print("| run | what | seconds per epoch | images/s |")
    print("|---|---|---|---|")
    print(f"| quickstart | digits, small_cnn, GAIR-FAT (K = 10), batch 64, median of {len(quick)} epochs "
          f"| {per_epoch:.2f} | {quick_images / per_epoch:.0f} |")
    print(f"| CIFAR format | {images} random 3x32x32 images, PreAct ResNet-18 (width {width}), PGD-10, "
          f"batch 128 | {cifar[0]['seconds']:.1f} | {images / cifar[0]['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
