"""``advc eval``: the seed-style table for a run folder or one checkpoint, with sanity checks.

A run folder is data, never code: everything about its model -- data set, model, threat, the
evaluation list -- is rebuilt from the spec files it recorded (``run.json`` names them, ``spec/``
holds them) through the checker and the compiler, and the rebuilt program's training identity
must equal the one stored in each checkpoint. ``resolved.json`` is a record for people that
nothing reads back. A lone checkpoint needs ``--spec``; ``--attacks`` replaces the evaluation list
with one written as in an ``evaluate`` block and checked the same way.

What ``advc eval`` measures is kept: one file per checkpoint in ``<run>/evaluations/`` (which
weights, which attacks with every parameter, n, ε, the accuracies and the sanity checks), never
overwriting another evaluation and never touching the training record (``results.json``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from advc.errors import UserError

CHECKPOINT_NAMES = ("best", "last")


@dataclass
class EvalTarget:
    """What to evaluate: the checked program the checkpoints belong to, and the checkpoints."""

    program: object  # advc.compiler.ir.Program
    checkpoints: dict[str, Path]
    run_dir: Path | None

    @property
    def spec_name(self) -> str:
        return self.program.name

    @property
    def seed(self) -> int:
        return self.program.train.seed

    @property
    def norm(self) -> str:
        return self.program.threat.norm

    @property
    def eps(self) -> float:
        """The radius models are evaluated at: the spec's (for a schedule, its value at the last epoch)."""
        return final_eps(self.program)


def final_eps(program) -> float:
    """The radius a run is evaluated at: its threat's ε at the last epoch."""
    from advc.compiler.program import value_at

    eps = program.threat.eps
    return float(eps.const) if eps.const is not None else float(value_at(program, "threat.eps", program.train.epochs - 1))


def _from_run_dir(run_dir: Path, spec: Path | None, overrides, trust_code: bool) -> EvalTarget:
    from advc.compiler.check import check_file
    from advc.compiler.identity import training_id
    from advc.compiler.parse import MAX_BYTES, decode
    from advc.runtime.folders import check_no_links, read_folder_file
    from advc.runtime.run import read_run_record

    record = read_run_record(run_dir)
    check_no_links(run_dir)  # evaluations/ is written: never through a link out of the folder
    if spec is not None:  # the user's spec says model/data/attacks; the folder gives the checkpoints
        program = check_file(spec, overrides or None)
    else:
        files = {item["path"]: decode(read_folder_file(run_dir, item["copy"], MAX_BYTES), str(run_dir / item["copy"]))
                 for item in record["files"]}  # fmt: skip
        recorded = check_file(record["entry"], record["overrides"] or None, files=files)
        program = check_file(record["entry"], [*record["overrides"], *overrides], files=files) if overrides else recorded
        if training_id(program) != record["training_id"]:
            raise UserError("the run folder's spec files do not rebuild the run they claim (training identity "
                            "differs)", where=str(run_dir / "spec"),
                            hint="the folder was edited; evaluate a checkpoint with --spec SPEC")
        if recorded.spec_hash != record["spec_hash"]:  # e.g. the evaluate list: not training, still the record
            raise UserError("the run folder's spec files or overrides were edited after the run (their hash differs "
                            "from run.json's spec_hash)", where=str(run_dir / "spec"),
                            hint="the folder was edited; evaluate a checkpoint with --spec SPEC")
    checkpoints = {name: run_dir / "checkpoints" / f"{name}.safetensors" for name in CHECKPOINT_NAMES
                   if (run_dir / "checkpoints" / f"{name}.safetensors").is_file()}
    if not checkpoints:
        raise UserError("the run folder holds no checkpoint", where=str(run_dir / "checkpoints"),
                        hint="train first: advc run SPEC --out " + str(run_dir))
    return EvalTarget(program, checkpoints, run_dir)


def resolve_target(target: Path, spec: Path | None, overrides=None, *, trust_code: bool = False) -> EvalTarget:
    from advc.compiler.check import check_file

    if target.is_dir():
        found = _from_run_dir(target, spec, overrides, trust_code)
    elif not target.exists():
        raise UserError("no such run folder or checkpoint", where=str(target))
    elif spec is None:
        raise UserError("a checkpoint alone does not say its model and data", where=str(target),
                        hint="pass --spec SPEC (the spec it was trained with)")
    else:
        found = EvalTarget(check_file(spec, overrides or None), {target.stem: target}, None)
    program = found.program
    if program.train is None:
        raise UserError(f"objective '{program.name}' has no train block: it does not say its model and data",
                        where=str(spec or target), hint="evaluate with the spec the model was trained with")
    if program.train.user_model and not trust_code:
        raise UserError(f"the spec names the model {program.train.model!r}, which imports and runs the module "
                        f"{program.train.model.partition(':')[0]!r}", where=str(spec or target),
                        hint="advc runs code a spec names only when you trust it: add --trust-code")
    return found


def evaluate_target(target: EvalTarget, *, attacks: str | None = None, n: int | None = None,
                    batch_size: int = 256, data_root: str | None = None, sanity: bool = True,
                    quiet: bool = False, trust_code: bool = False) -> tuple[dict, dict, int]:
    """Evaluate every checkpoint of ``target``; keep each evaluation in the run folder.

    Returns ({checkpoint: {label: %}}, {checkpoint: checks}, number of test samples used).
    """
    from advc.compiler.check import check_attacks
    from advc.compiler.identity import training_id
    from advc.compiler.lower import eval_text
    from advc.runtime.models import build_model
    from advc.runtime.results import write_evaluation

    if n is not None and n < 1:
        raise UserError("--n must be at least 1", where="--n")
    if batch_size < 1:
        raise UserError(f"--batch must be at least 1, got {batch_size}", where="--batch")
    program = target.program
    chosen = check_attacks(attacks) if attacks is not None else program.evaluate
    data, x, y = _test_set(program, data_root, n)
    t = program.train
    model = build_model(t.model, in_channels=data.in_channels, num_classes=data.num_classes, trust_code=trust_code,
                        **dict(t.model_args))
    loaded = _checked_checkpoints(target, model, training_id(program))
    table: dict[str, dict[str, float]] = {}
    checks: dict[str, list] = {}
    seen: dict[str, str] = {}
    for name, (state, extra, digest) in loaded.items():
        start = time.perf_counter()
        if digest in seen:  # best is often the last epoch: same weights, same numbers
            table[name] = dict(table[seen[digest]])
            if seen[digest] in checks:
                checks[name] = list(checks[seen[digest]])
        else:
            model.load_state_dict(state)
            table[name], checks[name] = _measure(model, x, y, chosen, target, name, batch_size=batch_size,
                                                 sanity=sanity, quiet=quiet)
        if target.run_dir is not None:
            write_evaluation(target.run_dir, checkpoint=name, weights_sha256=digest,
                             epoch=extra["epoch"], attacks=" ".join(eval_text(a) for a in chosen),
                             n=int(x.shape[0]), eps=target.eps, norm=target.norm, results=table[name],
                             sanity=checks.get(name) or None, seconds=time.perf_counter() - start)
        seen[digest] = name
    return table, {k: v for k, v in checks.items() if v}, int(x.shape[0])


def _checked_checkpoints(target: EvalTarget, model, expected: str) -> dict[str, tuple[dict, dict, str]]:
    """Every checkpoint, read and checked before any is evaluated (or its evaluation kept):
    {name: (model state, training state, sha256)}."""
    import torch

    from advc.runtime.checkpoint import checkpoint_digest, load_checkpoint
    from advc.runtime.loop import check_model_state, check_optimizer_state, check_training_state

    layout = torch.optim.SGD(model.parameters(), lr=1.0)  # the program's optimizer layout: one group, every parameter
    loaded = {}
    for name, path in target.checkpoints.items():
        state, optim, extra = load_checkpoint(path)
        if extra.get("training_id") != expected:
            raise UserError("the checkpoint was trained with other settings than the spec says", where=str(path),
                            hint="evaluate with the spec (and --set values) it was trained with")
        check_training_state(extra, path, training_id=expected, epochs=None)
        check_model_state(model, state, path)
        if optim is not None:  # not used here, but a state that does not fit its own model is not a real one
            check_optimizer_state(layout, optim, path)
        loaded[name] = (state, extra, checkpoint_digest(path))
    return loaded


def _test_set(program, data_root: str | None, n: int | None):
    """The spec's data set (never downloaded here: a run folder's data is already on disk) and its
    first ``n`` test samples."""
    from advc.runtime.data import load_dataset

    t = program.train
    args = dict(t.data_args)
    root = data_root if data_root is not None else args.pop("root", None)
    args.pop("download", None)
    data = load_dataset(t.data, root, False, **args)
    x, y = data.x_test, data.y_test
    if n is not None:
        x, y = x[:n], y[:n]
    return data, x, y


def _measure(model, x, y, attacks, target: EvalTarget, name: str, *, batch_size: int, sanity: bool,
             quiet: bool) -> tuple[dict[str, float], list]:
    """One set of weights: each attack's accuracy (a line each unless quiet), then the sanity checks."""
    from advc.runtime.evaluate import evaluate_model, parse_attack_list
    from advc.runtime.sanity import sanity_checks

    model.eval()
    results: dict[str, float] = {}
    for config in parse_attack_list(attacks):
        t0 = time.perf_counter()
        results.update(evaluate_model(model, x, y, [config], eps=target.eps, norm=target.norm, batch_size=batch_size))
        if not quiet:
            print(f"{name}: {config.label} {results[config.label]:.2f}%  ({time.perf_counter() - t0:.1f}s)", flush=True)
    checks = sanity_checks(model, x, y, results, eps=target.eps, norm=target.norm, batch_size=batch_size) \
        if sanity else []
    return results, checks
