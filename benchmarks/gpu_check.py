"""GPU check (issue #13): the GPU figures of docs/benchmarks.md in one command, within a budget.

    python benchmarks/gpu_check.py [--json gpu.json] [--budget-s 480]   # on one GPU, about 5 minutes
    python benchmarks/gpu_check.py --count [--json count.json]          # on the CPU: what costs on a GPU
    python benchmarks/gpu_check.py --smoke                              # tiny sizes, every CPU code path

On a GPU, in this order (cheap figures first, so a run killed by its budget still leaves most):
  epoch    PGD-10 adversarial training (specs/madry.adv, K = 10, step 2/255, eps 8/255) of
           PreAct ResNet-18 at batch 128 on random images written in the real CIFAR-10 layout
           (advc.runtime.data.write_cifar10_archive) and read back through advc's loader, through
           Accelerate as `advc run` builds it: fp32, bf16 (Accelerate's mixed_precision="bf16",
           i.e. autocast around the model's forward), bf16 + channels_last. Warm-up steps are
           timed one by one; then timed windows of steady-state steps between
           torch.cuda.synchronize() calls; seconds per epoch are EXTRAPOLATED from the median
           window to 50 000 images; peak GPU memory is torch.cuda.max_memory_allocated().
  ratio    advc's compiled GAIRAT training step against the published style
           (benchmarks/published_style.py's published_gairat_step: GA_PGD's per-sample loop,
           parameter gradients during the attack), batch 128, K = 10, fp32, same initial
           weights, interleaved repeats; then one step of each under torch.profiler (kernels,
           memcpys, synchronisations) and torch.cuda.set_sync_debug_mode("warn") (syncs).
  cli      `advc run specs/madry.adv ... --gpus 1` on the random CIFAR-format folder: 2 short
           epochs, the seconds each logged in the run folder's metrics.jsonl (the first
           includes CUDA/cuDNN start-up).
  compile  bf16 + channels_last + torch.compile (Accelerate's dynamo_backend="inductor"): the
           warm-up (compilation) reported apart from the steady state.
Each configuration runs in its own process (Accelerate's state is per process, and a stuck
compilation can be killed); the parent enforces --budget-s, prints every figure as it arrives
and rewrites --json after each one.

--count runs on the CPU and counts, per training step at batch 128 and K = 10, what costs on a
GPU, for advc's GAIRAT step and the published style (see GpuCostCounter for the method), plus
the FLOPs, and prints the projected GPU ratio of docs/benchmarks.md with its assumptions.
--smoke runs every part at tiny sizes on whatever device there is; parts that need CUDA
print "skipped: no CUDA".
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

EPOCH_IMAGES = 50_000  # one CIFAR-10 training epoch
GAIRAT_EPOCH = 60  # weights on (the published burn-in ends at epoch 60)
MADRY = {"threat.eps": "8/255", "attack.step_size": "2/255"}  # plus attack.steps = K
CONFIGS = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}
NO_CUDA = "skipped: no CUDA"


@dataclass(frozen=True)
class Sizes:
    width: int  # PreAct ResNet-18 width (64 = the paper's)
    batch: int
    K: int
    warmup: int  # warm-up steps, timed one by one
    windows: int  # timed windows of steady-state steps
    per_window: int
    ratio_rounds: int  # interleaved rounds of advc vs published
    ratio_steps: int  # steps per variant per round
    count_width: int  # width for the launch/sync count (the operator graph does not depend on it)
    flops_batch: int  # batch of the FLOP count at full width (FLOPs are linear in the batch)

    @property
    def train_images(self) -> int:
        """Images in the CIFAR-format folder: enough full batches for warm-up and windows."""
        return 5 * math.ceil((self.warmup + self.windows * self.per_window) * self.batch / 5)


FULL = Sizes(width=64, batch=128, K=10, warmup=5, windows=3, per_window=10, ratio_rounds=5, ratio_steps=3,
             count_width=8, flops_batch=8)
SMOKE = Sizes(width=4, batch=8, K=2, warmup=1, windows=2, per_window=1, ratio_rounds=1, ratio_steps=1,
              count_width=4, flops_batch=4)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def emit(result: dict) -> None:
    """A child's figures, one JSON line the parent collects (and prints as they come)."""
    print("RESULT " + json.dumps(result), flush=True)


def madry_overrides(K: int) -> dict:
    return dict(MADRY, **{"attack.steps": K})


# ---------------------------------------------------------------------------------------------
# child: one training configuration (epoch figures)


def child_epoch(job: dict) -> None:
    from accelerate import Accelerator

    import advc
    from advc.compiler.vocabulary.clauses import MIXED_PRECISION
    from advc.runtime.data import DeviceLoader, RandomCropFlip, load_dataset
    from advc.runtime.models import preact_resnet18

    s = Sizes(**job["sizes"])
    precision, channels_last, compiled = CONFIGS[job["config"]]
    deadline = job["deadline"]
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=MIXED_PRECISION[precision],
                              dynamo_backend=job["backend"] if compiled else "no")
    device = accelerator.device
    data = load_dataset("cifar10", job["data_root"]).to(device)
    loader = DeviceLoader(data.x_train, data.y_train, s.batch, shuffle=True, seed=0, drop_last=True,
                          augment=RandomCropFlip(4))
    prog = advc.load(ROOT / "specs" / "madry.adv", overrides=madry_overrides(s.K))
    m = prog.module
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = preact_resnet18(width=s.width).to(device).to(memory_format=fmt)
    optim_args = {k: v for k, v in prog.program.train.optim_args}  # madry's: numbers, no schedule
    optimizer = torch.optim.SGD(model.parameters(), lr=m.lr_at(0), **optim_args)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def batches():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for xb, yb in loader:
                yield xb.contiguous(memory_format=fmt), yb
            epoch += 1

    stream = batches()

    def step():
        xb, yb = next(stream)
        prog.train_step(model, optimizer, xb, yb, 0, backward=accelerator.backward)

    result = {"config": job["config"], "device": str(device), "batch": s.batch, "K": s.K, "width": s.width,
              "eps": m.EPS, "step_size": m.STEP_SIZE}
    warm = []
    for _ in range(s.warmup):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        warm.append(round(time.perf_counter() - t0, 4))
        print(f"    warm-up step {len(warm)}: {warm[-1]:.3f} s", flush=True)
        emit(dict(result, warmup_s=warm))  # a child killed later still leaves its warm-up
    result["warmup_s"] = warm
    windows = []
    for _ in range(s.windows):
        if time.time() + 2 * max(warm[-1], 0.01) * s.per_window > deadline:
            print("    stopped: budget", flush=True)
            break
        sync()
        t0 = time.perf_counter()
        for _ in range(s.per_window):
            step()
        sync()
        windows.append((time.perf_counter() - t0) / s.per_window)
        print(f"    window {len(windows)}: {windows[-1]:.4f} s/step", flush=True)
    if windows:
        per_step = statistics.median(windows)
        result.update(window_s_per_step=[round(w, 5) for w in windows], s_per_step=round(per_step, 5),
                      images_per_s=round(s.batch / per_step, 1),
                      s_per_epoch_extrapolated=round(per_step * EPOCH_IMAGES / s.batch, 1))
    if cuda:
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    else:
        result["peak_allocated_gib"] = NO_CUDA
    emit(result)


# ---------------------------------------------------------------------------------------------
# child: advc's compiled step vs the published style


def make_model(name: str, width: int):
    if name == "SmallCNN":
        from attack_floor import SmallCNN

        return SmallCNN()
    from advc.runtime.models import preact_resnet18

    return preact_resnet18(width=width)


def gairat_steps(model_name: str, width: int, K: int, device, foreach: bool | None = None):
    """advc's GAIRAT training step and the published one, each with its own copy of the same
    initial weights and its own SGD; returns {name: step(x, y)}."""
    import copy

    from published_style import published_gairat_step

    import advc

    prog = advc.load(ROOT / "specs" / "gairat.adv", overrides={"attack.steps": K})
    m = prog.module
    cfg = {"K": m.STEPS, "eps": m.EPS, "alpha": m.STEP_SIZE}
    torch.manual_seed(0)
    init = make_model(model_name, width).to(device)
    steps = {}
    for name in ["advc", "published"]:
        model = copy.deepcopy(init)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4, foreach=foreach)
        if name == "advc":
            steps[name] = lambda x, y, model=model, opt=opt: prog.train_step(model, opt, x, y, GAIRAT_EPOCH)
        else:
            steps[name] = lambda x, y, model=model, opt=opt: published_gairat_step(model, opt, x, y, cfg)
    return steps


def profile_step(fn) -> dict:
    """One step under torch.profiler and the CUDA sync debug mode: what really ran on the GPU."""
    import warnings

    from torch.profiler import ProfilerActivity, profile

    sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync()
    debug_syncs = sum("synchroniz" in str(w.message) for w in caught)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    counts = collections.Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            counts["gpu_events"] += 1
            counts["memcpy" if "memcpy" in ev.name.lower() else "kernels_and_memsets"] += 1
        elif ev.name.startswith(("cudaLaunch", "cuLaunch")):
            counts["launch_calls"] += 1
        elif "Synchronize" in ev.name:
            counts["synchronize_calls"] += 1
    return dict(counts, sync_debug_warnings=debug_syncs)


def child_ratio(job: dict) -> None:
    s = Sizes(**job["sizes"])
    deadline = job["deadline"]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    for model_name in ["preact_resnet18", "SmallCNN"]:
        steps = gairat_steps(model_name, s.width, s.K, device)
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(s.batch, 3, 32, 32, generator=gen).to(device)
        y = torch.randint(0, 10, (s.batch,), generator=gen).to(device)
        for fn in steps.values():  # warm-up: cuDNN, allocator, momentum buffers
            for _ in range(2):
                fn(x, y)
        sync()
        times = {name: [] for name in steps}
        for _ in range(s.ratio_rounds):
            if time.time() + 10 > deadline:
                print("    stopped: budget", flush=True)
                break
            for name, fn in steps.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(s.ratio_steps):
                    fn(x, y)
                sync()
                times[name].append((time.perf_counter() - t0) / s.ratio_steps)
        result = {"model": model_name if model_name == "SmallCNN" else f"preact_resnet18(width={s.width})",
                  "batch": s.batch, "K": s.K, "device": str(device)}
        if times["advc"]:
            a, p = statistics.median(times["advc"]), statistics.median(times["published"])
            result.update(advc_s_per_step=round(a, 5), published_s_per_step=round(p, 5),
                          published_over_advc=round(p / a, 3), rounds=len(times["advc"]))
            print(f"    {result['model']}: advc {a * 1e3:.1f} ms/step, published {p * 1e3:.1f} ms/step, "
                  f"published/advc {p / a:.2f}", flush=True)
        if cuda and time.time() + 20 < deadline:
            try:
                result["profiled"] = {name: profile_step(lambda fn=fn, x=x, y=y: fn(x, y))
                                      for name, fn in steps.items()}
            except Exception as exc:  # the timing above stands without the cross-check
                result["profiled"] = f"failed: {exc!r}"
        elif not cuda:
            result["profiled"] = NO_CUDA
        emit(result)


# ---------------------------------------------------------------------------------------------
# parent: running children within the budget, collecting figures


class Report:
    """All figures so far; rewritten to --json after every one, so a killed run leaves them."""

    def __init__(self, path: Path | None):
        self.path, self.data = path, {}

    def put(self, section: str, key: str | None, value) -> None:
        if key is None:
            self.data[section] = value
        else:
            self.data.setdefault(section, {})[key] = value
        if self.path is not None:
            from advc.files import atomic_write_text

            atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def run_child(job: dict, deadline: float) -> tuple[list[dict], str]:
    """Run `gpu_check.py --child JOB` until it exits or the deadline passes; echo its lines;
    return (its RESULTs, how it ended)."""
    job = dict(job, deadline=deadline)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    results: list[dict] = []
    tail: list[str] = []

    def read():
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("RESULT "):
                results.append(json.loads(line[len("RESULT "):]))
            else:
                tail.append(line.rstrip())
                del tail[:-20]
                if line.startswith("    "):
                    print(line, end="", flush=True)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(1.0, deadline - time.time()))
        how = "ok" if code == 0 else f"exit {code}: " + " | ".join(tail[-3:])
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        how = "killed: budget"
    reader.join(timeout=5)
    return results, how


def part_epoch(config: str, sizes: Sizes, data_root: Path, report: Report, deadline: float, backend: str) -> None:
    print(f"\n## epoch: {config}", flush=True)
    results, how = run_child({"kind": "epoch", "config": config, "sizes": asdict(sizes),
                              "data_root": str(data_root), "backend": backend}, deadline)
    res = dict(results[-1] if results else {}, status=how)
    report.put("epoch", config, res)
    if "s_per_step" in res:
        peak = res["peak_allocated_gib"]
        peak = f"{peak} GiB allocated" if isinstance(peak, (int, float)) else peak
        print(f"  {config}: {res['s_per_step']:.4f} s/step, {res['images_per_s']:.0f} images/s, "
              f"{res['s_per_epoch_extrapolated']:.1f} s/epoch EXTRAPOLATED to {EPOCH_IMAGES} images; warm-up "
              f"steps {res['warmup_s']} s; peak memory: {peak} ({how})", flush=True)
    else:
        print(f"  {config}: no steady-state figure ({how}); warm-up {res.get('warmup_s')}", flush=True)


def part_ratio(sizes: Sizes, report: Report, deadline: float) -> None:
    print("\n## ratio: advc GAIRAT step vs published style (fp32)", flush=True)
    results, how = run_child({"kind": "ratio", "sizes": asdict(sizes)}, deadline)
    report.put("ratio", None, {"models": results, "status": how})
    print(f"  ({how})", flush=True)


def part_cli(sizes: Sizes, data_root: Path, report: Report, deadline: float) -> None:
    """`advc run ... --gpus 1`, as a user runs it; seconds per epoch from metrics.jsonl."""
    print("\n## cli: advc run specs/madry.adv --gpus 1", flush=True)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        args = [sys.executable, "-m", "advc", "run", str(ROOT / "specs" / "madry.adv"), "--data-root", str(data_root),
                "--out", str(out), "--no-eval", "--quiet"]
        sets = {"train.data": "cifar10", "train.epochs": 2, "train.val": 0, "train.batch": sizes.batch,
                "train.model": f"preact_resnet18(width = {sizes.width})", **madry_overrides(sizes.K)}
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        if cuda:
            args += ["--gpus", "1"]
        else:
            print(f"  --gpus 1 {NO_CUDA}: the same command without it, on the CPU", flush=True)
        print("  " + " ".join(a if " " not in a else repr(a) for a in args[1:]), flush=True)
        try:
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.time()), check=False)
        except subprocess.TimeoutExpired:
            report.put("cli", None, {"status": "killed: budget"})
            print("  killed: budget", flush=True)
            return
        if done.returncode:
            report.put("cli", None, {"status": f"exit {done.returncode}", "stderr": done.stderr[-2000:]})
            print(f"  advc run failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
            return
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        resolved = json.loads((out / "resolved.json").read_text())
    images = sizes.train_images
    res = {"gpus": 1 if cuda else f"0 ({NO_CUDA})", "images": images, "batch": sizes.batch,
           "seconds_per_epoch": [m["seconds"] for m in metrics], "mixed_precision": resolved.get("mixed_precision"),
           "status": "ok"}
    last = metrics[-1]["seconds"]
    res["s_per_epoch_extrapolated_from_last"] = round(last * EPOCH_IMAGES / images, 1)
    report.put("cli", None, res)
    print(f"  logged seconds per epoch: {res['seconds_per_epoch']} for {images} images "
          f"({images / last:.0f} images/s in the last epoch; {res['s_per_epoch_extrapolated_from_last']} s per "
          f"{EPOCH_IMAGES} images, EXTRAPOLATED)", flush=True)


def summary(report: Report) -> None:
    epoch = report.data.get("epoch", {})
    if epoch:
        print("\n| configuration | warm-up steps (s) | s/step | images/s | s/epoch, extrapolated to 50 000 "
              "| peak allocated (GiB) |")
        print("|---|---|---|---|---|---|")
        for name, r in epoch.items():
            if not isinstance(r, dict):
                print(f"| {name} | {r} | | | | |")
                continue
            cells = [str(r.get("warmup_s", "")), str(r.get("s_per_step", r.get("status"))),
                     str(r.get("images_per_s", "")), str(r.get("s_per_epoch_extrapolated", "")),
                     str(r.get("peak_allocated_gib", ""))]
            print(f"| {name} | " + " | ".join(cells) + " |")
    rows = [r for r in report.data.get("ratio", {}).get("models", []) if "published_over_advc" in r]
    if rows:
        print("\n| model (GAIRAT step, fp32) | advc s/step | published s/step | published/advc |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['advc_s_per_step']} | {r['published_s_per_step']} "
                  f"| {r['published_over_advc']} |")


def gpu_check(args, sizes: Sizes, report: Report, deadline: float) -> None:
    from advc.runtime.data import write_cifar10_archive

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print(f"\nGPU parts {NO_CUDA} (run with --smoke to exercise their code paths on the CPU, or --count)")
        report.put("gpu", None, NO_CUDA)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        write_cifar10_archive(data_root, sizes.train_images // 5, seed=0)
        print(f"random CIFAR-10-format folder: {sizes.train_images} training images "
              f"({sizes.train_images // sizes.batch} batches of {sizes.batch})", flush=True)
        parts = [lambda c=c: part_epoch(c, sizes, data_root, report, deadline, args.backend)
                 for c in ["fp32", "bf16", "bf16+channels_last"]]
        parts += [lambda: part_ratio(sizes, report, deadline), lambda: part_cli(sizes, data_root, report, deadline),
                  lambda: part_epoch("bf16+channels_last+compile", sizes, data_root, report, deadline, args.backend)]
        for part in parts:
            if time.time() + 15 > deadline:
                print("\nskipped: budget spent", flush=True)
                break
            part()
    summary(report)


# ---------------------------------------------------------------------------------------------
# --count: what a training step would cost on a GPU, counted on the CPU


class GpuCostCounter:
    """Counts, while code runs on the CPU, the operator launches and host synchronisations it
    would make with its tensors on a GPU.

    Method. Two interposition layers, both public torch APIs:
    * a TorchDispatchMode sees every aten operator after autograd, the backward included. An
      operator on device tensors that is not a view/alias or an allocation launches at least
      one kernel on a GPU: counted as one launch (aten.convolution_backward as one per gradient
      it computes -- input, weight, bias). `aten._local_scalar_dense` (what `.item()`,
      `bool(t)`, `int(t)`, `float(t)` call) is a device-to-host copy the host waits for: a sync.
      Operators whose output shape depends on the data (nonzero, masked_select, unique,
      bincount, repeat_interleave, indexing with a boolean mask) sync too on a GPU.
    * a TorchFunctionMode (plus a wrapper around torch.from_numpy, which has no torch-function
      hook) tracks which tensors would live on the HOST on a GPU machine: those created by a
      factory without `device=` (torch.zeros(n), torch.from_numpy, torch.randint(...,
      generator=cpu_gen)) and whatever is computed from host tensors only. Operators on host
      tensors launch nothing. `.to(device)`/`.cuda()` of a host tensor is a host-to-device copy
      (a sync unless non_blocking=True: PyTorch's blocking copy waits for the stream);
      `torch.tensor(python_data, device=...)` is one too; `.cpu()`, `.numpy()`, `.tolist()` of a
      device tensor are device-to-host syncs; indexing a device tensor with a Python list or a
      host tensor copies the index to the device (a sync).
    Rules this relies on, true of the code counted here: a `.to(...)` of a host tensor moves it
    to the training device; `.to(...)` of a device tensor never moves it to the host.
    Launches are a lower bound on kernels: cuDNN may add layout transforms, a foreach optimizer
    op may split into several kernels.
    """

    NO_KERNEL: ClassVar[set[str]] = {"detach", "alias", "lift_fresh", "_unsafe_view", "empty", "empty_strided", "empty_like",
                 "new_empty", "new_empty_strided", "set_", "resize_", "sym_size", "sym_stride", "sym_numel"}
    DATA_DEPENDENT: ClassVar[set[str]] = {"nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive", "bincount",
                      "repeat_interleave"}
    INDEXING: ClassVar[set[str]] = {"index", "index_put", "index_put_", "_index_put_impl_"}
    HOST_FACTORIES: ClassVar[set[str]] = {"zeros", "ones", "empty", "full", "rand", "randn", "randint", "randperm", "arange",
                      "linspace", "eye", "tensor", "as_tensor"}

    def __init__(self):
        from torch.utils.flop_counter import flop_registry
        from torch.utils.weak import WeakIdKeyDictionary

        self._flop_registry = flop_registry
        self.host = WeakIdKeyDictionary()
        self.launches: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.copies: collections.Counter = collections.Counter()
        self.host_ops = 0
        self.views = 0
        self.mixed: collections.Counter = collections.Counter()  # host and device tensors in one op
        self.flops = 0  # matmul/convolution FLOPs, by torch.utils.flop_counter's formulas
        self._quiet = 0
        self._host_factory = 0

    # -- bookkeeping
    def is_host(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.host

    def tag_host(self, out) -> None:
        from torch.utils._pytree import tree_leaves

        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.host[t] = True

    def untag(self, t) -> None:
        if t in self.host:
            del self.host[t]

    def quiet_call(self, func, *args, **kwargs):
        self._quiet += 1
        try:
            return func(*args, **kwargs)
        finally:
            self._quiet -= 1

    @property
    def total_launches(self) -> int:
        return sum(self.launches.values())

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    def __enter__(self):
        counter = self
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Function(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return counter.on_function(func, args, kwargs or {})

        class _Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return counter.on_dispatch(func, args, kwargs or {})

        self._from_numpy = torch.from_numpy

        def from_numpy(array):
            out = self._from_numpy(array)
            self.host[out] = True
            return out

        torch.from_numpy = from_numpy
        self._modes = [_Function(), _Dispatch()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        torch.from_numpy = self._from_numpy
        return False

    # -- the function level: host tensors and host <-> device copies
    def on_function(self, func, args, kwargs):
        if self._quiet:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        T = torch.Tensor
        if name in self.HOST_FACTORIES and getattr(torch, name, None) is func:
            data_is_tensor = name in ("tensor", "as_tensor") and args and isinstance(args[0], torch.Tensor)
            if kwargs.get("device") is None:
                if data_is_tensor:
                    return func(*args, **kwargs)
                self._host_factory += 1
                try:
                    out = func(*args, **kwargs)
                finally:
                    self._host_factory -= 1
                self.tag_host(out)
                return out
            if name in ("tensor", "as_tensor") and not data_is_tensor:
                self.copies["H2D: torch.tensor(python data, device=...)"] += 1
                self.syncs["H2D blocking copy"] += 1
                return self.quiet_call(func, *args, **kwargs)
            return func(*args, **kwargs)
        if func in (T.to, T.cuda) and args and self.is_host(args[0]) and self._moves(func, args, kwargs):
            src = args[0]
            self.copies["H2D: .to(device) of a host tensor"] += 1
            if not kwargs.get("non_blocking", False):
                self.syncs["H2D blocking copy"] += 1
            out = self.quiet_call(func, *args, **kwargs)
            if out is src:  # a no-op on the CPU: give the 'device' copy its own identity
                out = self.quiet_call(src.clone)
            self.untag(out)
            return out
        if func in (T.cpu, T.numpy, T.tolist) and args and not self.is_host(args[0]):
            self.copies[f"D2H: .{name}()"] += 1
            self.syncs["D2H copy"] += 1
            out = self.quiet_call(func, *args, **kwargs)
            if out is args[0]:
                out = self.quiet_call(args[0].clone)
            if isinstance(out, torch.Tensor):
                self.host[out] = True
            return out
        if func in (T.__getitem__, T.__setitem__) and len(args) > 1 and not self.is_host(args[0]) \
                and self._host_index(args[1]):
            self.copies["H2D: index from a Python list or host tensor"] += 1
            self.syncs["H2D blocking copy"] += 1
        return func(*args, **kwargs)

    def _moves(self, func, args, kwargs) -> bool:
        if func is torch.Tensor.cuda:
            return True
        targets = list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
        return any((isinstance(t, (str, torch.device, int)) and not isinstance(t, bool))
                   or (isinstance(t, torch.Tensor) and not self.is_host(t)) for t in targets if t is not None)

    def _host_index(self, index) -> bool:
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, list) or self.is_host(i) for i in items)

    # -- the dispatch level: launches and syncs
    def on_dispatch(self, func, args, kwargs):
        from torch.utils._pytree import tree_leaves

        out = func(*args, **kwargs)
        if self._quiet:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_host = all(self.is_host(t) for t in inputs) if inputs else self._host_factory > 0
        name = func.overloadpacket.__name__
        if on_host:
            self.tag_host(out)
            self.host_ops += 1
            return out
        if any(self.is_host(t) and t.dim() > 0 for t in inputs):
            self.mixed[name] += 1  # would fail on a GPU: a host tensor in a device operator
        if name == "_local_scalar_dense":
            self.syncs["item/bool/int/float of a device tensor"] += 1
            self.copies["D2H: a scalar"] += 1
            return out
        if name in self.DATA_DEPENDENT and not (name == "repeat_interleave" and kwargs.get("output_size")):
            self.syncs[f"data-dependent shape: {name}"] += 1
        if name in self.INDEXING and any(t.dtype in (torch.bool, torch.uint8) for t in inputs[1:]):
            self.syncs[f"boolean-mask indexing: {name}"] += 1
        if func.is_view or name in self.NO_KERNEL:
            self.views += 1
            return out
        if func.overloadpacket in self._flop_registry:
            self.flops += self._flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        kernels = 1
        if name == "convolution_backward":
            kernels = max(1, sum(bool(b) for b in args[-1]))
        self.launches[name] += kernels
        return out


def count_step(fn, x, y) -> GpuCostCounter:
    """Counts of one steady-state step (one step first: momentum buffers, first-call paths)."""
    fn(x, y)
    with GpuCostCounter() as counter:
        fn(x, y)
    return counter


def time_per_call(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def project(c: dict, L: float, S: float, h_iter: float, c_advc: float, flop_ratio: float) -> float:
    """Seconds per step on a GPU under the model of docs/benchmarks.md:

        T = max(flop_ratio * c_advc, N_async * L) + N_scalar * (h_iter + L + S) + N_other_sync * S

    c_advc: advc's GPU compute time per step (flop_ratio scales it to this step's FLOPs);
    N_async: launches the host issues ahead of the GPU, L host time each -- they hide behind
    the compute unless the host is the slower one; N_scalar: item/bool syncs, each right after
    one small kernel, with the host's per-sample Python work h_iter before it -- the GPU idles
    through all of it; N_other_sync: other syncs (blocking host-to-device copies)."""
    n_scalar = c["syncs_scalar"]
    n_async = c["launches"] - n_scalar
    return max(flop_ratio * c_advc, n_async * L) + n_scalar * (h_iter + L + S) + (c["syncs"] - n_scalar) * S


def count(args, sizes: Sizes, report: Report) -> None:
    from attack_floor import count_survivors

    torch.set_num_threads(1)
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(1)
    print(f"\n## count: per training step at batch {sizes.batch}, K = {sizes.K}, on the CPU "
          f"(torch {torch.__version__}, {torch.get_num_threads()} thread)\n", flush=True)
    print("Counted with GpuCostCounter (TorchDispatchMode + TorchFunctionMode, see its docstring) on the "
          "second of two steps; SGD with foreach=True (the CUDA default path). Launch/sync counts do not "
          "depend on the width, FLOPs are linear in the batch:")
    print(f"launches and syncs on preact_resnet18(width={sizes.count_width}) at batch {sizes.batch}; FLOPs "
          f"(torch.utils.flop_counter: matmuls and convolutions) on preact_resnet18(width={sizes.width}) at batch "
          f"{sizes.flops_batch}, times {sizes.batch // sizes.flops_batch}.\n", flush=True)
    results = {}
    for model_name in ["preact_resnet18", "SmallCNN"]:
        x = torch.rand(sizes.batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (sizes.batch,), generator=gen)
        steps = gairat_steps(model_name, sizes.count_width, sizes.K, device, foreach=True)
        flop_steps = gairat_steps(model_name, sizes.width, sizes.K, device, foreach=True)
        xs, ys = x[: sizes.flops_batch], y[: sizes.flops_batch]
        label = "SmallCNN" if model_name == "SmallCNN" else "preact_resnet18"
        for name in steps:
            counter = count_step(steps[name], x, y)
            flops = count_step(flop_steps[name], xs, ys).flops
            scalar = sum(v for k, v in counter.syncs.items() if k.startswith("item/bool"))
            results[(label, name)] = {
                "launches": counter.total_launches, "syncs": counter.total_syncs, "syncs_scalar": scalar,
                "syncs_by_kind": dict(counter.syncs), "copies": dict(counter.copies), "host_ops": counter.host_ops,
                "views": counter.views, "mixed_device_ops": dict(counter.mixed),
                "gflop": flops * sizes.batch / sizes.flops_batch / 1e9,
                "top_launches": dict(counter.launches.most_common(8)),
            }
    # the published loop's per-sample host work, on CPU tensors (GA_PGD's count_survivors)
    logits = torch.randn(sizes.batch, 10, generator=gen)
    predict, target = logits.max(1, keepdim=True)[1], torch.randint(0, 10, (sizes.batch,), generator=gen)
    loop_s = time_per_call(lambda: count_survivors(predict, target, torch.zeros(sizes.batch)), repeats=11)
    h_iter = loop_s / sizes.batch
    print("| model | step | launches (>= kernels) | host syncs | of which item/bool | other syncs (kind: n) "
          "| host-only ops | GFLOP/step |")
    print("|---|---|---|---|---|---|---|---|")
    for (label, name), c in results.items():
        other = ", ".join(f"{k}: {v}" for k, v in c["syncs_by_kind"].items() if not k.startswith("item/bool")) or "-"
        print(f"| {label} | {name} | {c['launches']} | {c['syncs']} | {c['syncs_scalar']} | {other} "
              f"| {c['host_ops']} | {c['gflop']:.1f} |")
    mixed = {k: c["mixed_device_ops"] for k, c in results.items() if c["mixed_device_ops"]}
    print(f"\nmixed host/device operators (would fail on a GPU): {mixed or 'none'}")
    print(f"published per-sample loop (count_survivors) on the CPU: {h_iter * 1e6:.2f} us per sample "
          f"(host work between two syncs on a GPU)", flush=True)

    # the projection
    L, S = args.launch_us * 1e-6, args.sync_us * 1e-6
    proj = {}
    print(f"\nProjection (assumptions: host time per launched operator L = {args.launch_us} us, sync latency "
          f"S = {args.sync_us} us per host sync, point estimate of the GPU compute C_advc = advc GFLOP / "
          f"{args.tflops} TFLOP/s effective; published compute = C_advc x its FLOP ratio; model in project()):\n")
    print("| model | C_advc (ms) | advc ms/step | published ms/step | published/advc |")
    print("|---|---|---|---|---|")
    for label in ["preact_resnet18", "SmallCNN"]:
        a, p = results[(label, "advc")], results[(label, "published")]
        f = p["gflop"] / a["gflop"]
        point = a["gflop"] * 1e9 / (args.tflops * 1e12)

        def ratio(c_advc, a=a, p=p, f=f):
            return project(p, L, S, h_iter, c_advc, f) / project(a, L, S, h_iter, c_advc, 1.0)

        grid = sorted({point, 0.005, 0.01, 0.02, 0.04, 0.08})
        rows = []
        for c_advc in grid:
            ta, tp = project(a, L, S, h_iter, c_advc, 1.0), project(p, L, S, h_iter, c_advc, f)
            rows.append({"C_advc_ms": c_advc * 1e3, "advc_ms": ta * 1e3, "published_ms": tp * 1e3, "ratio": tp / ta,
                         "point_estimate": c_advc == point})
            mark = " (point estimate)" if c_advc == point else ""
            print(f"| {label} | {c_advc * 1e3:.2f}{mark} | {ta * 1e3:.1f} | {tp * 1e3:.1f} | {tp / ta:.2f} |")
        lo, hi = 1e-6, 10.0  # the C at which the ratio falls to 3 (ratio decreases with C)
        if ratio(lo) < 3:
            breakeven = None
        else:
            for _ in range(100):
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if ratio(mid) >= 3 else (lo, mid)
            breakeven = lo
        host_bound = a["launches"] * L
        proj[label] = {"flop_ratio": f, "advc_host_ms": host_bound * 1e3, "rows": rows,
                       "ratio_3_if_C_advc_below_ms": None if breakeven is None else breakeven * 1e3}
    print()
    for label, pr in proj.items():
        be = pr["ratio_3_if_C_advc_below_ms"]
        print(f"{label}: published/advc FLOP ratio {pr['flop_ratio']:.2f}; advc's host time per step "
              f"{pr['advc_host_ms']:.1f} ms (launches x L); ratio >= 3 iff advc's GPU compute per step "
              f"< {be:.1f} ms" if be else f"{label}: ratio < 3 at any compute time", flush=True)
    report.put("count", None, {
        "batch": sizes.batch, "K": sizes.K, "count_width": sizes.count_width, "flops_width": sizes.width,
        "flops_batch": sizes.flops_batch,
        "per_step": {f"{label} {name}": c for (label, name), c in results.items()},
        "published_loop_us_per_sample": h_iter * 1e6,
        "assumptions": {"launch_us": args.launch_us, "sync_us": args.sync_us, "effective_tflops": args.tflops},
        "projection": proj})


# ---------------------------------------------------------------------------------------------


def header() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, GPU: {gpu}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (rewritten as they come)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="hard time budget of the whole run")
    parser.add_argument("--count", action="store_true", help="only the CPU count and the projection")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path, CUDA-only ones skipped")
    parser.add_argument("--backend", default=None,
                        help="torch.compile backend of the compile configuration (default: inductor; with --smoke "
                             "aot_eager, which traces the same way without generating code)")
    parser.add_argument("--launch-us", type=float, default=10.0,
                        help="assumed host time per launched operator: dispatch + kernel launch (us)")
    parser.add_argument("--sync-us", type=float, default=10.0, help="assumed host sync latency (us)")
    parser.add_argument("--tflops", type=float, default=50.0,
                        help="assumed effective GPU TFLOP/s of advc's step (the point estimate only)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        job = json.loads(args.child)
        {"epoch": child_epoch, "ratio": child_ratio}[job["kind"]](job)
        return 0
    start = time.time()
    deadline = start + args.budget_s
    sizes = SMOKE if args.smoke else FULL
    if args.backend is None:
        args.backend = "aot_eager" if args.smoke else "inductor"
    report = Report(args.json)
    print(f"# advc GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{header()}\n"
          f"sizes: {sizes}; budget {args.budget_s:.0f} s; torch.compile backend {args.backend}", flush=True)
    report.put("machine", None, {"header": header(), "sizes": asdict(sizes), "budget_s": args.budget_s,
                                 "smoke": args.smoke})
    if not args.count:
        gpu_check(args, sizes, report, deadline)
    if args.count or args.smoke:
        count(args, sizes, report)
    report.put("elapsed_s", None, round(time.time() - start, 1))
    print(f"\nelapsed {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
