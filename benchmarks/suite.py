"""The performance suite of issue #6 in one command.

    python benchmarks/suite.py [--only attack,published,early_stop,scaling,memory] [--smoke]

  attack      benchmarks/attack_floor.py: compiled attacks / the compute floor (item 1);
  published   benchmarks/published_style.py: compiled vs published-style epochs (item 2);
  early_stop  epoch of FAT tau = 0 / epoch of PGD-10 (madry), against their BP counts (item 3);
  scaling     `advc run --cpu-procs 2` vs `advc run`, seconds per epoch from metrics.jsonl (item 4);
  memory      peak RSS of one PGD-10 training step of PreAct ResNet-18, batch 128, in a fresh
              process (item 5; CPU only: torch.cuda.max_memory_allocated needs a GPU).
Each part prints a Markdown table; ratios are measured within one run, variants interleaved.
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
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ["attack", "published", "early_stop", "scaling", "memory"]


def header() -> str:
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, no GPU; load average {os.getloadavg()[0]:.2f}")


def script(name: str, smoke: bool) -> None:
    args = [sys.executable, str(HERE / name)] + (["--smoke"] if smoke else [])
    print(f"\n## {name}\n", flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


# ---------------------------------------------------------------------------------------------
# item 3: early-stop savings realised


def early_stop(smoke: bool, images: int = 2048, batch: int = 128, repeats: int = 3) -> None:
    import copy

    sys.path.insert(0, str(HERE))
    from attack_floor import SmallCNN

    import advc
    from advc.runtime.data import DeviceLoader, RandomCropFlip

    if smoke:
        images, batch, repeats = 16, 8, 1
    torch.manual_seed(0)
    x = torch.rand(images, 3, 32, 32)
    y = torch.randint(0, 10, (images,))
    init = SmallCNN()  # untrained: on random labels most samples are misclassified at once
    progs = {"madry (PGD-10)": advc.load(ROOT / "specs" / "madry.adv"),
             "fat tau = 0": advc.load(ROOT / "specs" / "fat.adv", overrides={"form.tau": 0})}
    times = {name: [] for name in progs}
    counts = {}
    for _ in range(repeats):
        for name, prog in progs.items():
            model = copy.deepcopy(init)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
            loader = DeviceLoader(x, y, batch, shuffle=True, seed=0, augment=RandomCropFlip(4))
            bps = rows = 0
            start = time.perf_counter()
            for xb, yb in loader:
                result, _ = prog.train_step(model, opt, xb, yb, 0)
                bps += int(result.steps.sum())
                rows += result.passes
            times[name].append(time.perf_counter() - start)
            counts[name] = (bps, rows)
    med = {name: statistics.median(t) for name, t in times.items()}
    (m_name, m), (f_name, f) = list(med.items())
    (m_bp, m_rows), (f_bp, f_rows) = counts[m_name], counts[f_name]
    time_ratio, bp_ratio = f / m, f_bp / m_bp
    # every training step also runs one forward+backward over the batch (the update)
    row_ratio = (f_rows + images) / (m_rows + images)
    print(f"\n## early-stop savings (item 3)\n\n{header()}")
    print(f"{images} random 3x32x32 images, random labels, untrained SmallCNN (most samples are misclassified "
          f"at the first check, so FAT tau = 0 stops them at once), batch {batch}, K = 10, "
          f"epoch 0, median of {repeats}\n")
    print("| objective | s/epoch | BPs (sum of steps) | attack rows computed (passes) |")
    print("|---|---|---|---|")
    for name in progs:
        print(f"| {name} | {med[name]:.2f} | {counts[name][0]} | {counts[name][1]} |")
    print("\n| time ratio fat/madry | BP ratio | time / BP ratio | rows ratio (passes + update rows) | time / rows ratio |")
    print("|---|---|---|---|---|")
    print(f"| {time_ratio:.3f} | {bp_ratio:.3f} | {time_ratio / bp_ratio:.2f} | {row_ratio:.3f} "
          f"| {time_ratio / row_ratio:.2f} |", flush=True)


# ---------------------------------------------------------------------------------------------
# item 4: scaling over CPU processes


def scaling(smoke: bool, per_batch: int = 128, width: int = 16, repeats: int = 2) -> None:
    from advc.runtime.data import write_cifar10_archive

    if smoke:
        per_batch, width, repeats = 8, 4, 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_cifar10_archive(tmp / "data", per_batch)
        (tmp / "madry.adv").write_text((ROOT / "specs" / "madry.adv").read_text())
        spec = tmp / "cifar.adv"
        spec.write_text(
            f'objective cifar_pgd10 extends madry {{\n}}\n\ntrain {{\n    data    cifar10(root = "{tmp / "data"}")\n'
            f"    model   preact_resnet18(width = {width})\n    epochs  1\n    val     0\n}}\n"
        )
        variants = {"1 process (`advc run`)": [], "2 CPU processes (`advc run --cpu-procs 2`)": ["--cpu-procs", "2"]}
        secs = {name: [] for name in variants}
        for r in range(repeats):
            for name, extra in variants.items():
                out = tmp / f"run{r}_{len(extra)}"
                args = [sys.executable, "-m", "advc", "run", str(spec), "--no-eval", "--quiet", "--out", str(out)]
                done = subprocess.run(args + extra, cwd=ROOT, capture_output=True, text=True, check=False)
                if done.returncode:
                    sys.exit(f"advc run failed:\n{done.stdout}\n{done.stderr}")
                metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                secs[name].append(metrics[0]["seconds"])
    images = per_batch * 5
    print(f"\n## scaling (item 4)\n\n{header()}")
    print(f"{images} random images in the CIFAR-10 format, PreAct ResNet-18 (width {width}), PGD-10 (madry.adv), "
          f"global batch 128, 1 epoch, --no-eval; seconds per epoch from metrics.jsonl, median of {repeats}\n")
    print("| run | s/epoch | images/s | speed-up |")
    print("|---|---|---|---|")
    base = statistics.median(secs[next(iter(variants))])
    for name in variants:
        s = statistics.median(secs[name])
        print(f"| {name} | {s:.1f} | {images / s:.1f} | {base / s:.2f} |", flush=True)


# ---------------------------------------------------------------------------------------------
# item 5: memory

_MEMORY_CHILD = r"""
import json, resource, sys, time, torch
import advc
from advc.runtime.models import preact_resnet18
width, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
prog = advc.load(sys.argv[3])
model = preact_resnet18(width=width)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
before = kib()
start = time.perf_counter()
prog.train_step(model, opt, x, y, 0)
first = time.perf_counter() - start
after_first = kib()
prog.train_step(model, opt, x, y, 0)
after_second = kib()
print(json.dumps({"before": before, "first": after_first, "second": after_second, "seconds": first,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def memory(smoke: bool, width: int = 64, batch: int = 128) -> None:
    if smoke:
        width, batch = 4, 8
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(width), str(batch), str(ROOT / "specs" / "madry.adv")],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 1 / 1024
    print(f"\n## memory (item 5)\n\n{header()}")
    print(f"fresh process; PreAct ResNet-18 (width {width}, {r['params']:,} parameters), batch {batch}, "
          f"PGD-10 (madry.adv), SGD; max RSS from resource.getrusage\n")
    print("| max RSS after setup (MiB) | after step 1 (MiB) | after step 2 (MiB) | peak delta of a step (MiB) | step 1 (s) |")
    print("|---|---|---|---|---|")
    print(f"| {r['before'] * mib:.0f} | {r['first'] * mib:.0f} | {r['second'] * mib:.0f} "
          f"| {(r['second'] - r['before']) * mib:.0f} | {r['seconds']:.1f} |")
    print("\nGPU figure (torch.cuda.max_memory_allocated): not measurable, no GPU on this machine.", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmarks still run")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")
    print(f"# advc benchmark suite, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{header()}")
    if "attack" in parts:
        script("attack_floor.py", args.smoke)
    if "published" in parts:
        script("published_style.py", args.smoke)
    if "early_stop" in parts:
        early_stop(args.smoke)
    if "scaling" in parts:
        scaling(args.smoke)
    if "memory" in parts:
        memory(args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
