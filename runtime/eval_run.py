"""``advc eval``: the seed-style table for a run folder or one checkpoint, with sanity checks.

A run folder says everything about its model (``resolved.json``: data set, model, threat,
evaluation list), so ``advc eval runs/quickstart`` needs nothing else; a lone checkpoint
needs ``--spec`` to say which model and data it belongs to. ``--attacks`` replaces the
evaluation list with one written as in an ``evaluate`` block and checked the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from advc.errors import UserError

CHECKPOINT_NAMES = ("best", "last")


@dataclass
class EvalTarget:
    """What to evaluate: checkpoints, the model/data they belong to, the attacks."""

    spec_name: str
    seed: int
    train: dict
    evaluate: list
    eps: float
    norm: str
    checkpoints: dict[str, Path]
    run_dir: Path | None


def _from_run_dir(run_dir: Path) -> EvalTarget:
    resolved = run_dir / "resolved.json"
    try:
        info = json.loads(resolved.read_text(encoding="utf-8"))
        target = EvalTarget(
            spec_name=str(info["spec"]), seed=int(info["train"]["seed"]), train=dict(info["train"]),
            evaluate=list(info["evaluate"]), eps=float(info["eps"]), norm=str(info["norm"]),
            checkpoints={}, run_dir=run_dir,
        )
    except FileNotFoundError:
        raise UserError("not a run folder: no resolved.json", where=str(run_dir),
                        hint="point at a folder written by advc run, or at a checkpoint with --spec") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"resolved.json is unreadable: {exc}", where=str(resolved)) from None
    for name in CHECKPOINT_NAMES:
        path = run_dir / "checkpoints" / f"{name}.safetensors"
        if path.is_file():
            target.checkpoints[name] = path
    if not target.checkpoints:
        raise UserError("the run folder holds no checkpoint", where=str(run_dir / "checkpoints"),
                        hint="train first: advc run SPEC --out " + str(run_dir))
    return target


def _from_spec(spec: Path, checkpoint: Path | None, overrides) -> EvalTarget:
    from advc.api import compile_spec, import_generated
    from advc.runtime.train import threat_eps

    program, source = compile_spec(spec, overrides)
    module = import_generated(source, f"<advc {program.name}>", f"advc_eval_{program.spec_hash[:12]}")
    train = dict(module.TRAIN)
    checkpoints = {checkpoint.stem: checkpoint} if checkpoint is not None else {}
    return EvalTarget(program.name, int(train["seed"]), train, [dict(item) for item in module.EVALUATE],
                      threat_eps(module, int(train["epochs"])), module.NORM, checkpoints, None)


def resolve_target(target: Path, spec: Path | None, overrides=None) -> EvalTarget:
    if target.is_dir():
        found = _from_run_dir(target)
        if spec is not None:  # the spec says model/data/attacks; the folder gives the checkpoints
            chosen = _from_spec(spec, None, overrides)
            chosen.checkpoints, chosen.run_dir = found.checkpoints, found.run_dir
            return chosen
        return found
    if not target.exists():
        raise UserError("no such run folder or checkpoint", where=str(target))
    if spec is None:
        raise UserError("a checkpoint alone does not say its model and data", where=str(target),
                        hint="pass --spec SPEC (the spec it was trained with)")
    return _from_spec(spec, target, overrides)


def evaluate_target(target: EvalTarget, *, attacks: str | None = None, n: int | None = None,
                    batch_size: int = 256, data_root: str | None = None, sanity: bool = True,
                    quiet: bool = False) -> tuple[dict, dict, int]:
    """Evaluate every checkpoint of ``target``.

    Returns ({checkpoint: {label: %}}, {checkpoint: checks}, number of test samples used).
    """
    from advc.compiler.check import check_attacks
    from advc.runtime.checkpoint import load_checkpoint
    from advc.runtime.data import load_dataset
    from advc.runtime.evaluate import evaluate_model, parse_attack_list, sanity_checks
    from advc.runtime.models import build_model

    if attacks is not None:
        items = [dict(a.params, name=a.name) for a in check_attacks(attacks)]
        target.evaluate = items
    configs = parse_attack_list(target.evaluate)
    train = target.train
    data_args = dict(train.get("data_args") or {})
    data = load_dataset(train["data"], data_root if data_root is not None else data_args.get("root"), False)
    x, y = data.x_test, data.y_test
    if n is not None:
        if n < 1:
            raise UserError("--n must be at least 1", where="--n")
        x, y = x[:n], y[:n]
    model = build_model(train["model"], in_channels=data.in_channels, num_classes=data.num_classes,
                        **dict(train.get("model_args") or {}))
    table: dict[str, dict[str, float]] = {}
    checks: dict[str, list] = {}
    seen: dict[int, str] = {}
    for name, path in target.checkpoints.items():
        state, _, extra = load_checkpoint(path)
        epoch = int(extra.get("epoch", -1))
        if epoch >= 0 and epoch in seen:  # best is often the last epoch: same weights, same numbers
            table[name], checks[name] = dict(table[seen[epoch]]), list(checks.get(seen[epoch], []))
            continue
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise UserError(f"checkpoint does not fit model {train['model']!r}: {str(exc).splitlines()[0]}",
                            where=str(path), hint="pass the --spec it was trained with") from None
        model.eval()
        table[name] = {}
        for config in configs:
            start = time.perf_counter()
            result = evaluate_model(model, x, y, [config], eps=target.eps, norm=target.norm, batch_size=batch_size)
            table[name].update(result)
            if not quiet:
                print(f"{name}: {config.label} {result[config.label]:.2f}%  ({time.perf_counter() - start:.1f}s)",
                      flush=True)
        if sanity:
            checks[name] = sanity_checks(model, x, y, table[name], eps=target.eps, norm=target.norm,
                                         batch_size=batch_size)
        if epoch >= 0:
            seen[epoch] = name
    return table, checks, int(x.shape[0])
