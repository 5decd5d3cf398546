"""``advc run``: train a compiled objective with Hugging Face Accelerate, then evaluate it.

The loop is Accelerate's idiomatic one: build the model and optimizer plain,
``accelerator.prepare(model, optimizer)``, ``accelerator.backward(loss)`` (handed to the
generated ``train_step``), ``accelerator.is_main_process`` around every write and
``accelerator.reduce`` for metrics. Two deliberate departures, both for exactness:

* Data comes from :class:`advc.runtime.data.DeviceLoader` instead of a prepared
  ``DataLoader``: every process cuts the same GLOBAL batch and keeps its shard, so N
  processes see exactly the batches one process sees.
* The per-process loss (a mean over the local shard) is scaled by
  ``n_local * world / n_global`` before ``backward``: DDP averages gradients over processes,
  and with unequal shards that average is the global mean only after this scaling.
  Instance weights are normalised over the global batch through ``all_reduce``.

Reproducibility: every random draw is derived from ``TRAIN["seed"]`` and the position in
training -- the permutation and augmentation from (seed, epoch, batch) inside the loader,
the attack's random start from a generator seeded from (seed, epoch, step), the global RNGs
(dropout) reseeded from (seed, epoch, rank) at the start of each epoch. So ``--resume`` from
the last checkpoint replays the remaining epochs exactly and reaches the weights an
uninterrupted run reaches. For a uniform L-inf start on the CPU, process r advances the
shared generator past the samples of processes < r, so its noise is its slice of the noise
one process would draw (other starts / devices: distinct but not identical streams).

DDP runs with ``broadcast_buffers=False``: the attack calls the model a data-dependent
number of times per process (samples stop early), and a buffer broadcast inside each forward
would make processes wait on each other forever. BatchNorm statistics then stay per process
(use ``sync_bn true`` on GPUs to keep them global); the checkpoint holds the main process's.

Nothing is written before the spec compiles, the data loads and the model fits the data:
:func:`prepare` does all checks first, and only then does the main process create the run
folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import random
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advc.errors import UserError

__all__ = ["RunOptions", "Setup", "prepare", "run", "train"]

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
VALIDATION_ATTACKS = [{"name": "natural"}, {"name": "pgd", "steps": 20}]
CHECKPOINTS = "checkpoints"


@dataclass
class RunOptions:
    """What ``advc run`` was asked to do (the CLI's options, one field each)."""

    spec: Path
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    resume: bool = False
    gpus: int = 0  # 0: whatever device Accelerate picks; N: N GPU processes
    cpu_procs: int = 0  # N: N CPU processes over gloo
    data_root: str | None = None
    download: bool = False
    quiet: bool = False
    evaluate: bool = True
    eval_n: int | None = None
    eval_batch: int = 256

    def advc_args(self) -> list[str]:
        """The ``advc run ...`` argument list that reproduces these options (for the launcher)."""
        args = ["run", str(self.spec)]
        for item in self.overrides:
            args += ["--set", item]
        if self.out is not None:
            args += ["--out", str(self.out)]
        if self.resume:
            args.append("--resume")
        if self.gpus:
            args += ["--gpus", str(self.gpus)]
        if self.cpu_procs:
            args += ["--cpu-procs", str(self.cpu_procs)]
        if self.data_root is not None:
            args += ["--data-root", str(self.data_root)]
        if self.download:
            args.append("--download")
        if self.quiet:
            args.append("--quiet")
        if not self.evaluate:
            args.append("--no-eval")
        if self.eval_n is not None:
            args += ["--eval-n", str(self.eval_n)]
        return args


@dataclass
class Setup:
    """Everything checked before anything is written."""

    program: Any
    source: str
    module: types.ModuleType
    train: dict
    data: Any  # advc.runtime.data.Dataset, on the CPU
    model: Any  # torch.nn.Module, freshly initialised from the seed, on the CPU
    n_val: int
    eps: float
    run_dir: Path
    evaluate: list


# --------------------------------------------------------------------------------------------
# small helpers


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers such as (seed, epoch, step)."""
    digest = hashlib.sha256("/".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(module: types.ModuleType, epoch: int) -> float:
    if hasattr(module, "lr_at"):
        return float(module.lr_at(epoch))
    return float(module.LR)


def threat_eps(module: types.ModuleType, epochs: int) -> float:
    """The ε models are evaluated at: the spec's (for a schedule, its final value)."""
    if hasattr(module, "EPS"):
        return float(module.EPS)
    return float(module.eps_at(max(epochs - 1, 0)))


def _to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _tensorboard_available() -> bool:
    return (
        importlib.util.find_spec("tensorboard") is not None
        or importlib.util.find_spec("tensorboardX") is not None
    )


# --------------------------------------------------------------------------------------------
# checks (no writes)


def _default_run_dir(name: str) -> Path:
    return Path("runs") / name


def prepare(opts: RunOptions) -> Setup:
    """Compile, load the data, build the model and check it fits -- writing nothing."""
    import torch

    from advc.api import compile_spec, import_generated
    from advc.runtime.data import load_dataset
    from advc.runtime.evaluate import parse_attack_list
    from advc.runtime.models import build_model, check_model_fits

    program, source = compile_spec(opts.spec, list(opts.overrides) or None)
    run_dir = Path(opts.out) if opts.out is not None else _default_run_dir(program.name)
    # Generation is deterministic and takes milliseconds, so the module is always regenerated
    # (and allow-list validated) rather than read back from the run folder, where a file could
    # have been edited; run_dir/objective.py is the copy a reader inspects.
    module = import_generated(
        source, str(run_dir / "objective.py"), f"advc_run_{program.name}_{program.spec_hash[:12]}"
    )
    train = dict(module.TRAIN)
    evaluate = [dict(item) for item in module.EVALUATE]
    parse_attack_list(evaluate)  # a bad evaluation list fails now, not after training

    last = run_dir / CHECKPOINTS / "last.safetensors"
    if opts.resume and not last.is_file():
        raise UserError(
            "nothing to resume: no last checkpoint",
            where=str(last),
            hint="start the run without --resume",
        )
    if opts.resume:  # checked before anything in the run folder is rewritten
        from advc.runtime.checkpoint import load_checkpoint

        _, _, extra = load_checkpoint(last)
        if extra.get("spec_hash") != program.spec_hash:
            raise UserError(
                "the spec or its overrides changed since the checkpoint was written",
                where=str(run_dir),
                hint="resume with the same spec and --set values, or use --out",
            )
    if not opts.resume and last.is_file():
        raise UserError(
            "the run folder already holds a trained run",
            where=str(run_dir),
            hint="pass --resume to continue it, or --out DIR for a fresh run folder",
        )
    if train["precision"] == "fp16" and (opts.cpu_procs or not torch.cuda.is_available()):
        raise UserError(
            "fp16 mixed precision needs a GPU",
            where="train.precision",
            hint="use precision bf16 or fp32 on the CPU",
        )
    if train.get("sync_bn") and opts.cpu_procs > 1:
        raise UserError(
            "sync_bn needs GPUs (torch's SyncBatchNorm does not run on the CPU)",
            where="train.sync_bn",
            hint="set train.sync_bn=false for --cpu-procs",
        )

    data_args = dict(train.get("data_args") or {})
    root = opts.data_root if opts.data_root is not None else data_args.get("root")
    download = bool(opts.download or data_args.get("download", False))
    data = load_dataset(train["data"], root, download)

    n_train = int(data.x_train.shape[0])
    val = train.get("val", 0) or 0
    n_val = round(val * n_train) if isinstance(val, float) and val < 1 else int(val)
    if not 0 <= n_val < n_train:
        raise UserError(
            f"validation split of {n_val} samples does not fit {n_train} training samples",
            where="train.val",
            hint=f"choose val between 0 and {n_train - 1} (or a fraction < 1)",
        )

    seed_everything(int(train["seed"]))  # the same initial weights in every process and every run
    model = build_model(
        train["model"],
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        **dict(train.get("model_args") or {}),
    )
    check_model_fits(
        model,
        data.in_channels,
        data.image_size,
        data.num_classes,
        model_name=train["model"],
        dataset_name=data.name,
    )
    return Setup(
        program,
        source,
        module,
        train,
        data,
        model,
        n_val,
        threat_eps(module, int(train["epochs"])),
        run_dir,
        evaluate,
    )


# --------------------------------------------------------------------------------------------
# entry point


def run(opts: RunOptions) -> int:
    """``advc run``: start the processes asked for, or train in this one. Returns an exit code."""
    from advc.runtime.launch import launch, launched, require_gpus

    if opts.gpus and opts.cpu_procs:
        raise UserError(
            "--gpus and --cpu-procs exclude each other",
            where="advc run",
            hint="pick GPUs or CPU processes",
        )
    if opts.gpus < 0 or opts.cpu_procs < 0:
        raise UserError("process counts must be positive", where="--gpus/--cpu-procs")
    if opts.eval_n is not None and opts.eval_n < 1:
        raise UserError("--eval-n must be at least 1", where="--eval-n")
    if opts.gpus and not launched():
        require_gpus(opts.gpus)
    n = max(opts.gpus, opts.cpu_procs)
    if n > 1 and not launched():
        setup = prepare(opts)  # fail here, in one process, with one line
        if opts.out is None:
            opts = dataclasses.replace(opts, out=setup.run_dir)
        opts = dataclasses.replace(
            opts, out=Path(opts.out).resolve(), spec=Path(opts.spec).resolve()
        )
        return launch(
            opts.advc_args(),
            n,
            cpu=opts.cpu_procs > 1,
            mixed_precision=PRECISION[setup.train["precision"]],
        )
    train(opts)
    return 0


# --------------------------------------------------------------------------------------------
# the training loop


class _Progress:
    """A rich progress bar with live loss / kappa on a TTY; one line per epoch otherwise."""

    def __init__(self, enabled: bool, quiet: bool, epochs: int):
        self.live = enabled and not quiet and sys.stdout.isatty()
        self.quiet = quiet or not enabled
        self.epochs = epochs
        self.bar = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
            )
            self.bar.start()
        self.task = None

    def epoch(self, epoch: int, total: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=total, stats="")

    def step(self, stats: str) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, stats=stats)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        elif not self.quiet:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _batch_generator(device, seed: int, epoch: int, step: int, skip: int, like, module) -> Any:
    """The attack's generator for one step, shared by all processes, advanced past the
    samples of lower ranks (exact on the CPU for the uniform L-inf start)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(mix_seed(seed, epoch, step))
    if (
        skip
        and getattr(module, "INIT", None) == "uniform"
        and getattr(module, "NORM", None) == "linf"
    ):
        torch.rand((skip, *like.shape[1:]), generator=gen, device=device, dtype=like.dtype)
    return gen


def _shard(n: int, world: int, rank: int) -> tuple[int, int]:
    """(start, size) of process ``rank``'s contiguous shard of ``n`` items (torch.tensor_split)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def _evaluate_sharded(
    accelerator, model, x, y, attacks, *, eps, norm, batch_size, report=None
) -> dict[str, float]:
    """{label: accuracy %} over all of x, each process attacking its shard, attack by attack
    (``report(label, accuracy, seconds)`` after each one, for progress lines)."""
    import torch

    from advc.runtime.evaluate import evaluate_model, parse_attack_list

    n = int(x.shape[0])
    start, size = _shard(n, accelerator.num_processes, accelerator.process_index)
    xs, ys = x[start : start + size], y[start : start + size]
    out: dict[str, float] = {}
    for cfg in parse_attack_list(attacks):
        t0 = time.perf_counter()
        local = 0.0
        if size:
            local = evaluate_model(model, xs, ys, [cfg], eps=eps, norm=norm, batch_size=batch_size)[
                cfg.label
            ]
        count = torch.tensor(
            [round(local * size / 100.0)], dtype=torch.float64, device=accelerator.device
        )
        count = accelerator.reduce(count, reduction="sum")
        out[cfg.label] = 100.0 * float(count[0]) / n if n else 0.0
        if report is not None:
            report(cfg.label, out[cfg.label], time.perf_counter() - t0)
    return out


def _stop_if_not_finite(
    value, epoch, epochs, step, steps, run_dir, all_reduce, what="the training loss"
) -> None:
    """Raise a one-line ``UserError`` when ``value`` (the detached loss, or a finiteness flag)
    is not finite in any process; every process reduces the same flag, so all stop together
    and none waits in a collective. Nothing has been saved for this epoch yet, so the last
    good checkpoint stays as it is."""
    import torch

    value = value.detach()
    ok = value.all() if value.dtype == torch.bool else torch.isfinite(value).all()
    bad = all_reduce((~ok).to(torch.float32).reshape(1))
    if float(bad[0]) == 0:
        return
    if value.dtype == torch.bool or bool(ok):  # non-finite weights, or in another process
        became = "became nan/inf"
    else:
        became = "became nan" if bool(torch.isnan(value).any()) else "became inf"
    last = run_dir / CHECKPOINTS / "last.safetensors"
    kept = (
        f"the last good checkpoint is kept: {last}"
        if last.is_file()
        else "no checkpoint was written before it"
    )
    raise UserError(
        f"{what} {became} at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps} -- {kept}",
        hint="lower the learning rate or check the data",
    )


def _write_run_folder(setup: Setup, opts: RunOptions, accelerator) -> None:
    from advc import __version__
    from advc.runtime.report import atomic_write_text

    run_dir = setup.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINTS).mkdir(exist_ok=True)
    atomic_write_text(run_dir / "spec.adv", Path(opts.spec).read_text(encoding="utf-8"))
    atomic_write_text(run_dir / "objective.py", setup.source)
    program = setup.program
    resolved = {
        "spec": program.name,
        "file": str(opts.spec),
        "chain": list(program.chain),
        "spec_hash": program.spec_hash,
        "overrides": list(opts.overrides),
        "advc_version": __version__,
        "train": setup.train,
        "evaluate": setup.evaluate,
        "eps": setup.eps,
        "norm": getattr(setup.module, "NORM", None),
        "n_val": setup.n_val,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        "program": _jsonable(program),
    }
    atomic_write_text(
        run_dir / "resolved.json", json.dumps(resolved, indent=2, ensure_ascii=False) + "\n"
    )


def train(opts: RunOptions) -> dict | None:
    """Train (this process's part of) a run and evaluate its checkpoints; returns the results
    (``None`` with ``--no-eval``)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from advc.runtime.checkpoint import load_checkpoint, save_checkpoint
    from advc.runtime.data import DeviceLoader, RandomCropFlip, split_validation
    from advc.runtime.report import append_metrics, truncate_metrics, write_plots

    setup = prepare(opts)
    module, cfg, run_dir = setup.module, setup.train, setup.run_dir
    seed, epochs, batch = int(cfg["seed"]), int(cfg["epochs"]), int(cfg["batch"])
    tensorboard = _tensorboard_available()
    accelerator = Accelerator(
        cpu=opts.cpu_procs > 0,
        mixed_precision=PRECISION[cfg["precision"]],
        log_with="tensorboard" if tensorboard else None,
        project_dir=str(run_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        dynamo_backend="inductor" if cfg.get("compile") else "no",  # torch.compile, through Accelerate
    )
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    main = accelerator.is_main_process
    if main:
        _write_run_folder(setup, opts, accelerator)
    accelerator.wait_for_everyone()

    # --- data: whole tensors on the device, validation held out of the training data ---
    data = setup.data.to(device)
    x_tr, y_tr, x_val, y_val = (data.x_train, data.y_train, data.x_train[:0], data.y_train[:0])
    if setup.n_val:
        x_tr, y_tr, x_val, y_val = split_validation(data.x_train, data.y_train, setup.n_val, seed)
    augment = RandomCropFlip(pad=4) if cfg.get("augment") and min(data.image_size) >= 16 else None
    n_train = int(x_tr.shape[0])
    drop_last = (
        0 < n_train % batch < world
    )  # a last global batch too small to give every process a sample
    loader = DeviceLoader(
        x_tr,
        y_tr,
        batch,
        shuffle=True,
        seed=seed,
        drop_last=drop_last,
        rank=rank,
        world_size=world,
        augment=augment,
    )

    # --- model and optimizer, built plain, then prepared ---
    model = setup.model
    if cfg.get("sync_bn") and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    optimizers = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    try:
        optimizer = optimizers[cfg["optim"]](
            model.parameters(), lr=lr_at(module, 0), **dict(cfg.get("optim_args") or {})
        )
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"cannot build optimizer {cfg['optim']!r}: {exc}", where="train.optim"
        ) from exc

    start_epoch, best, best_epoch = 0, float("-inf"), -1
    if opts.resume:
        model_state, optim_state, extra = load_checkpoint(
            run_dir / CHECKPOINTS / "last", map_location=device
        )
        model.load_state_dict(model_state)
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        start_epoch = int(extra["epoch"]) + 1
        best, best_epoch = float(extra["best_metric"]), int(extra["best_epoch"])
    memory_format = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model, optimizer = accelerator.prepare(model, optimizer)
    try:  # checkpoints hold the plain module's state dict, compiled or not
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    except TypeError:  # accelerate < 1.3
        unwrapped = accelerator.unwrap_model(model)

    history = truncate_metrics(run_dir, start_epoch) if main else []
    if tensorboard:
        accelerator.init_trackers(
            "tensorboard",
            config={k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))},
        )

    def all_reduce(t):
        return accelerator.reduce(t, reduction="sum")

    k_max = int(getattr(module, "STEPS", 10))
    progress = _Progress(main, opts.quiet, epochs)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            seed_everything(mix_seed(seed, epoch, rank))  # dropout etc.: replayable per epoch
            lr = lr_at(module, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loader.set_epoch(epoch)
            progress.epoch(epoch, len(loader))
            sums = torch.zeros(
                5, dtype=torch.float64, device=device
            )  # loss*n, n, kappa, bps, passes
            hist = torch.zeros(k_max + 1, dtype=torch.float64, device=device)
            for step, (x_batch, yb) in enumerate(loader):
                xb = x_batch.contiguous(memory_format=memory_format)
                n_global = min(batch, n_train - step * batch)
                skip, n_local = _shard(n_global, world, rank)
                gen = _batch_generator(device, seed, epoch, step, skip, xb, module)
                scale = n_local * world / n_global

                def backward(value, scale=scale):
                    accelerator.backward(value * scale)

                result, loss = module.train_step(
                    model,
                    optimizer,
                    xb,
                    yb,
                    epoch,
                    backward=backward,
                    all_reduce=all_reduce,
                    generator=gen,
                )
                _stop_if_not_finite(loss, epoch, epochs, step, len(loader), run_dir, all_reduce)
                kappa = result.kappa.clamp(0, k_max)
                sums += torch.stack(
                    [
                        loss.double() * n_local,
                        torch.tensor(float(n_local), device=device),
                        kappa.sum().double(),
                        result.steps.sum().double(),
                        torch.tensor(float(result.passes), device=device),
                    ]
                ).to(sums)
                hist += torch.bincount(kappa, minlength=k_max + 1).double()
                if progress.live:
                    progress.step(f"loss {loss.item():.4f}  κ {kappa.float().mean().item():.2f}")
            sums, hist = all_reduce(sums), all_reduce(hist)
            n_seen = max(float(sums[1]), 1.0)
            val = (
                _evaluate_sharded(
                    accelerator,
                    unwrapped,
                    x_val,
                    y_val,
                    VALIDATION_ATTACKS,
                    eps=setup.eps,
                    norm=module.NORM,
                    batch_size=opts.eval_batch,
                )
                if setup.n_val
                else {}
            )
            record = {
                "epoch": epoch,
                "lr": lr,
                "loss": float(sums[0]) / n_seen,
                "kappa_mean": float(sums[2]) / n_seen,
                "kappa_hist": [int(v) for v in hist.tolist()],
                "bps": int(sums[3]),
                "passes": int(sums[4]),
                "val_natural": val.get("Natural"),
                "val_pgd20": val.get("PGD-20"),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            # the loss of the last step was finite, but its update may not have been
            params = [p.detach().isfinite().all() for p in unwrapped.parameters()]
            _stop_if_not_finite(
                torch.stack(params).all(),
                epoch,
                epochs,
                len(loader) - 1,
                len(loader),
                run_dir,
                all_reduce,
                what="the weights",
            )
            metric = record["val_pgd20"] if record["val_pgd20"] is not None else float(epoch)
            improved = metric > best
            if improved:
                best, best_epoch = metric, epoch
            if main:
                state = {k: v for k, v in _to_cpu(unwrapped.state_dict()).items()}
                extra = {
                    "epoch": epoch,
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "spec": setup.program.name,
                    "spec_hash": setup.program.spec_hash,
                    "seed": seed,
                    "processes": world,
                    "metrics": record,
                }
                optim_state = _to_cpu(optimizer.state_dict())
                if improved:
                    save_checkpoint(
                        run_dir / CHECKPOINTS / "best",
                        model_state=state,
                        optimizer_state=optim_state,
                        extra=extra,
                    )
                save_checkpoint(
                    run_dir / CHECKPOINTS / "last",
                    model_state=state,
                    optimizer_state=optim_state,
                    extra=extra,
                )
                append_metrics(run_dir, record)
                history.append(record)
                write_plots(run_dir, history)
            if tensorboard:
                accelerator.log(
                    {
                        k: v
                        for k, v in record.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    },
                    step=epoch,
                )
            val_text = (
                f"  val nat {record['val_natural']:.2f}%  PGD-20 {record['val_pgd20']:.2f}%"
                if setup.n_val
                else ""
            )
            progress.line(
                f"epoch {epoch + 1}/{epochs}  lr {lr:.4g}  loss {record['loss']:.4f}  "
                f"κ {record['kappa_mean']:.2f}  BPs {record['bps']}{val_text}  "
                f"({record['seconds']:.1f}s)" + ("  *best" if improved else "")
            )
            accelerator.wait_for_everyone()
    finally:
        progress.close()
    if tensorboard:
        accelerator.end_training()

    if not opts.evaluate:
        return None
    return _final_evaluation(opts, setup, accelerator, unwrapped, data)


def _final_evaluation(opts: RunOptions, setup: Setup, accelerator, unwrapped, data) -> dict:
    """Evaluate best and last on the TEST split with the spec's attacks; write results.json."""
    from advc.runtime.checkpoint import load_checkpoint
    from advc.runtime.results import Row, results_markdown, write_results

    run_dir = setup.run_dir
    x, y = data.x_test, data.y_test
    if opts.eval_n is not None:
        x, y = x[: opts.eval_n], y[: opts.eval_n]
    table: dict[str, dict[str, float]] = {}
    evaluated: dict[int, str] = {}  # epoch -> checkpoint already evaluated (best is often last)
    main = accelerator.is_main_process and not opts.quiet
    for name in ("best", "last"):
        path = run_dir / CHECKPOINTS / f"{name}.safetensors"
        if not path.is_file():
            continue
        model_state, _, extra = load_checkpoint(path, map_location=accelerator.device)
        epoch = int(extra["epoch"])
        if epoch in evaluated:
            table[name] = dict(table[evaluated[epoch]])
            if main:
                print(
                    f"test {name}: same weights as {evaluated[epoch]} (epoch {epoch + 1})",
                    flush=True,
                )
            continue
        unwrapped.load_state_dict(model_state)

        def report(label, acc, seconds, name=name, epoch=epoch):
            if main:
                print(
                    f"test {name} (epoch {epoch + 1}): {label} {acc:.2f}%  ({seconds:.1f}s)",
                    flush=True,
                )

        table[name] = _evaluate_sharded(
            accelerator,
            unwrapped,
            x,
            y,
            setup.evaluate,
            eps=setup.eps,
            norm=setup.module.NORM,
            batch_size=opts.eval_batch,
            report=report,
        )
        evaluated[epoch] = name
    if accelerator.is_main_process:
        write_results(
            run_dir, setup.program.name, int(setup.train["seed"]), table, n=int(x.shape[0])
        )
        rows = [Row(name, cols) for name, cols in table.items()]
        print(
            f"\n{setup.program.name}: test accuracy (%) on {int(x.shape[0])} samples, "
            f"eps {setup.eps:.4g} ({setup.module.NORM}); run folder {run_dir}\n",
            flush=True,
        )
        print(results_markdown(rows, first_column="Checkpoint"), flush=True)
    accelerator.wait_for_everyone()
    return table
