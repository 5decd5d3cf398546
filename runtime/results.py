"""Result tables: one run's evaluation on disk, and Markdown tables like the papers'.

On-disk format
--------------
A run folder holds ``results.json``, one JSON object::

    {
      "spec": "gair_fat",                 # the objective's name (str)
      "seed": 0,                          # the training seed (int)
      "n": 10000,                         # number of evaluated test samples (int >= 0)
      "checkpoints": {                    # checkpoint -> {column label: accuracy in %}
        "best": {"Natural": 88.59, "FGSM": 64.1, "PGD-20": 56.21, "CW∞": 52.3, "AA": 47.9},
        "last": {"Natural": 88.44, "PGD-20": 50.64}
      },
      "sanity": {                         # optional: checkpoint -> gradient-masking checks
        "best": [{"name": "monotone-in-eps", "status": "pass", "detail": "..."}]
      }
    }

Column labels are those of :attr:`advc.runtime.evaluate.AttackConfig.label`; accuracies are
percentages (0-100) like the papers' tables. Unknown extra keys are ignored on reading, so
the format can grow. The file is written atomically (a temporary file, then ``os.replace``)
so an interrupted run never leaves a half-written table.

Tables
------
:func:`results_markdown` renders rows (checkpoints of one run, or specs) with the canonical
columns Natural, FGSM, PGD-20, CW∞, PGD-100, AA -- those present, in that order, then any
other columns in order of appearance. A cell holding several values (one per seed) prints
as ``mean ± sample std`` ("89.34 ± 0.22"), as the FAT / GAIRAT tables report 5 seeds.
:func:`merge_runs` (``advc table``) tabulates many run folders by *experiment*: it reads each
folder's ``run.json`` (experiment_id, the experiment's settings, the seed, the advc version) and
its kept evaluations (``evaluations/``), averages the seeds of one experiment measured alike, and
shows as columns the settings that differ between rows. :func:`collect` is the reading half, which
``advc plot`` (:mod:`advc.runtime.plots`) shares.

This module imports no torch: reading and tabulating results must work anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from advc.errors import AdvcError, UserError
from advc.files import atomic_write_text
from advc.runtime.folders import read_metrics

__all__ = [
    "CANONICAL_COLUMNS",
    "CHECKPOINTS",
    "EVALUATIONS",
    "MEASURED",
    "RESULTS_FILE",
    "RUN_EVALUATION",
    "TABLE_FORMATS",
    "Collected",
    "Differences",
    "Group",
    "Measurement",
    "Row",
    "RunRecord",
    "RunResults",
    "Table",
    "build_table",
    "canonical_attacks",
    "collect",
    "differing_keys",
    "distinguish",
    "evaluation_key",
    "find_run_dirs",
    "format_cell",
    "load_evaluations",
    "load_results",
    "merge_runs",
    "order_columns",
    "read_run",
    "results_json",
    "results_markdown",
    "run_markdown",
    "sanity_markdown",
    "short_names",
    "value_formatter",
    "write_evaluation",
    "write_results",
]

RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"

#: Column order of the papers' tables (FAT Table 1, GAIRAT Table 1) plus AutoAttack.
CANONICAL_COLUMNS: tuple[str, ...] = ("Natural", "FGSM", "PGD-20", "CW∞", "PGD-100", "AA")
#: ``advc table --cost``: what training cost, from metrics.jsonl -- backward passes per training
#: sample summed over the epochs (FAT's "BPs"), and the epochs' wall seconds on the machine that ran them.
COST_COLUMNS: tuple[str, ...] = ("BPs/sample", "train s")


@dataclass
class Row:
    """One table row: ``name`` (a checkpoint such as "best", or a spec) and, per column
    label, an accuracy or a list of accuracies (one per seed)."""

    name: str
    values: Mapping[str, float | Sequence[float]] = field(default_factory=dict)


def order_columns(labels: Iterable[str]) -> list[str]:
    """Column labels in the papers' order: the canonical ones present, then the others as they
    first appear (each once)."""
    present = list(dict.fromkeys(labels))
    canonical = [c for c in CANONICAL_COLUMNS if c in present]
    return canonical + [c for c in present if c not in CANONICAL_COLUMNS]


def _columns(rows: Sequence[Row]) -> list[str]:
    return order_columns(label for row in rows for label in row.values)


def format_cell(value: float | Sequence[float] | None) -> str:
    """ "87.30" for one value, "89.34 ± 0.22" (mean ± sample standard deviation) for
    several, "-" for none (the papers' mark for "not evaluated")."""
    if value is None:
        return "-"
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def results_markdown(rows: Sequence[Row], *, first_column: str = "Defense") -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (see the module docstring)."""
    columns = _columns(rows)
    body = [[row.name, *(format_cell(row.values.get(c)) for c in columns)] for row in rows]
    return _markdown([first_column, *columns], body)


def _markdown(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def _check_fields(check: Any) -> tuple[str, str, str]:
    if isinstance(check, Mapping):
        return str(check["name"]), str(check["status"]), str(check.get("detail", ""))
    return str(check.name), str(check.status), str(check.detail)


def sanity_markdown(checks: Iterable[Any]) -> str:
    """One Markdown list item per check: ``- **pass** name: detail`` (or ``warn``, flagged
    so it stands out). Takes :class:`advc.runtime.evaluate.Check` objects or their dicts."""
    lines = []
    for check in checks:
        name, status, detail = _check_fields(check)
        mark = "⚠️ **warn**" if status == "warn" else "**pass**"
        lines.append(f"- {mark} `{name}`: {detail}")
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------------------
# one run on disk
# --------------------------------------------------------------------------------------


@dataclass
class RunResults:
    """The content of one ``results.json`` (see the module docstring)."""

    spec: str
    seed: int
    checkpoints: dict[str, dict[str, float]]
    n: int
    sanity: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"spec": self.spec, "seed": self.seed, "n": self.n, "checkpoints": self.checkpoints}
        if self.sanity:
            data["sanity"] = self.sanity
        return data


def _sanity_dicts(sanity: Mapping[str, Iterable[Any]] | None) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for checkpoint, checks in (sanity or {}).items():
        out[str(checkpoint)] = [
            dict(zip(("name", "status", "detail"), _check_fields(c))) for c in checks
        ]
    return out


def results_json(
    spec: str,
    seed: int,
    checkpoints: Mapping[str, Mapping[str, float]],
    *,
    n: int,
    sanity: Mapping[str, Iterable[Any]] | None = None,
) -> str:
    """The text of a ``results.json`` (validated: what this writes, :func:`load_results`
    reads back)."""
    data = {
        "spec": spec,
        "seed": seed,
        "n": n,
        "checkpoints": {
            str(k): {str(c): float(v) for c, v in cols.items()} for k, cols in checkpoints.items()
        },
    }
    checks = _sanity_dicts(sanity)
    if any(checks.values()):  # the checks that ran; never an empty placeholder
        data["sanity"] = {k: v for k, v in checks.items() if v}
    _validate(data, "<results>")
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_results(
    run_dir: str | os.PathLike[str],
    spec: str,
    seed: int,
    checkpoints: Mapping[str, Mapping[str, float]],
    *,
    n: int,
    sanity: Mapping[str, Iterable[Any]] | None = None,
) -> Path:
    """Write ``run_dir/results.json`` and ``results.md`` (the same table, for reading) atomically;
    returns the JSON file's path."""
    text = results_json(spec, seed, checkpoints, n=n, sanity=sanity)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RESULTS_FILE
    atomic_write_text(target, text)
    atomic_write_text(run_dir / RESULTS_MD, run_markdown(load_results(target)))
    return target


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate(data: Any, where: str) -> None:
    def bad(what: str) -> UserError:
        return UserError(
            f"malformed results file: {what}",
            where=where,
            hint="it is written by `advc run`; re-run the evaluation to recreate it",
        )

    if not isinstance(data, dict):
        raise bad("the top level must be a JSON object")
    for key in ("spec", "seed", "checkpoints", "n"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    if not isinstance(data["spec"], str) or not data["spec"]:
        raise bad("'spec' must be a non-empty string")
    for key in ("seed", "n"):
        if not isinstance(data[key], int) or isinstance(data[key], bool):
            raise bad(f"{key!r} must be an integer")
    if data["n"] < 0:
        raise bad("'n' must not be negative")
    checkpoints = data["checkpoints"]
    if not isinstance(checkpoints, dict):
        raise bad("'checkpoints' must be an object of checkpoint -> {column: accuracy}")
    for name, cols in checkpoints.items():
        if not isinstance(cols, dict):
            raise bad(f"checkpoints.{name} must be an object of column -> accuracy")
        for label, value in cols.items():
            if not _is_number(value) or not 0.0 <= value <= 100.0:
                raise bad(
                    f"checkpoints.{name}.{label} must be an accuracy in [0, 100], got {value!r}"
                )
    sanity = data.get("sanity", {})
    if not isinstance(sanity, dict):
        raise bad("'sanity' must be an object of checkpoint -> list of checks")
    for name, checks in sanity.items():
        if not isinstance(checks, list):
            raise bad(f"sanity.{name} must be a list of checks")
        for check in checks:
            if (
                not isinstance(check, dict)
                or not isinstance(check.get("name"), str)
                or check.get("status") not in ("pass", "warn")
                or not isinstance(check.get("detail", ""), str)
            ):
                raise bad(
                    f"sanity.{name} has an entry that is not "
                    '{"name": str, "status": "pass"|"warn", "detail": str}'
                )


def load_results(path: str | os.PathLike[str]) -> RunResults:
    """Read a run folder's ``results.json`` (or the file itself). A missing, unreadable or
    malformed file raises :class:`advc.errors.UserError` naming it."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            "no results file",
            where=str(file),
            hint="evaluate the run first (`advc run` writes it at the end)",
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot read the results file: {exc.strerror or exc}", where=str(file)
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"malformed results file: not JSON ({exc.msg} at line {exc.lineno})", where=str(file)
        ) from None
    _validate(data, str(file))
    return RunResults(
        spec=data["spec"],
        seed=data["seed"],
        checkpoints={
            k: {c: float(v) for c, v in cols.items()} for k, cols in data["checkpoints"].items()
        },
        n=data["n"],
        sanity={k: list(v) for k, v in data.get("sanity", {}).items()},
        path=file,
    )


def run_markdown(results: RunResults) -> str:
    """One run's table (rows = checkpoints) followed by its sanity checks."""
    rows = [Row(name, cols) for name, cols in results.checkpoints.items()]
    text = f"**{results.spec}** (seed {results.seed}, {results.n} test samples)\n\n"
    text += results_markdown(rows, first_column="Checkpoint")
    for checkpoint, checks in results.sanity.items():
        if checks:
            text += f"\nSanity checks ({checkpoint}):\n\n" + sanity_markdown(checks)
    return text


# --------------------------------------------------------------------------------------
# kept evaluations: every evaluation of a run folder's checkpoints, one file each
# --------------------------------------------------------------------------------------

EVALUATIONS = "evaluations"


def evaluation_key(weights_sha256: str, attacks: str, n: int, eps: float, norm: str) -> str:
    """What makes two evaluations the same: the weights, the attack list, the sample count, ε."""
    text = json.dumps([weights_sha256, attacks, n, float(eps), norm])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_evaluation(run_dir: str | os.PathLike[str], *, checkpoint: str, weights_sha256: str, epoch: int,
                     attacks: str, n: int, eps: float, norm: str, results: Mapping[str, float],
                     sanity: Iterable[Any] | None = None, seconds: float | None = None,
                     by: str = "advc eval") -> Path:
    """Keep one evaluation in ``run_dir/evaluations/`` (a new file; nothing is overwritten).

    The file says which weights (the checkpoint's sha256), which attacks with every parameter
    (the evaluate-list text, canonical), how many test samples, which ε -- and the accuracies,
    plus the sanity checks when they ran.
    """
    from advc import __version__

    key = evaluation_key(weights_sha256, attacks, n, eps, norm)
    record = {
        "format": "advc-evaluation", "version": 1, "key": key, "checkpoint": checkpoint,
        "weights_sha256": weights_sha256, "epoch": int(epoch), "attacks": attacks, "n": int(n), "eps": float(eps),
        "norm": norm, "results": {str(k): float(v) for k, v in results.items()},
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "by": by,
        "advc_version": __version__,
    }  # fmt: skip
    checks = _sanity_dicts({"": sanity or []})[""]
    if checks:
        record["sanity"] = checks
    if seconds is not None:
        record["seconds"] = round(float(seconds), 3)
    _validate_evaluation(record, "<evaluation>")
    folder = Path(run_dir) / EVALUATIONS
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = folder / f"{checkpoint}-{key}-{stamp}.json"
    i = 1
    while path.exists():  # the same evaluation again within a second: keep both
        path = folder / f"{checkpoint}-{key}-{stamp}-{i}.json"
        i += 1
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def _validate_evaluation(data: Any, where: str) -> None:
    def bad(what: str) -> UserError:
        return UserError(f"malformed evaluation file: {what}", where=where,
                         hint="it is written by advc eval / advc run; move it away and evaluate again")

    if not isinstance(data, dict) or data.get("format") != "advc-evaluation":
        raise bad("not an advc evaluation record")
    for key, kind in (("key", str), ("checkpoint", str), ("weights_sha256", str), ("attacks", str), ("norm", str),
                      ("results", dict), ("created", str)):
        if not isinstance(data.get(key), kind):
            raise bad(f"'{key}' must be a {kind.__name__}")
    for key in ("n", "epoch"):
        if not isinstance(data.get(key), int) or isinstance(data.get(key), bool) or data[key] < 0:
            raise bad(f"'{key}' must be a whole number >= 0")
    if not _is_number(data.get("eps")) or data["eps"] < 0:
        raise bad("'eps' must be a number >= 0")
    for label, value in data["results"].items():
        if not _is_number(value) or not 0.0 <= value <= 100.0:
            raise bad(f"results.{label} must be an accuracy in [0, 100], got {value!r}")
    if "sanity" in data:
        _validate({"spec": "x", "seed": 0, "n": 0, "checkpoints": {}, "sanity": {"x": data["sanity"]}}, where)


def load_evaluations(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every kept evaluation of a run folder, oldest first (each validated; a bad file is one line)."""
    folder = Path(run_dir) / EVALUATIONS
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"unreadable evaluation file: {exc}", where=str(path)) from None
        _validate_evaluation(data, str(path))
        data["path"] = str(path)
        out.append(data)
    return sorted(out, key=lambda d: (d["created"], d["path"]))


# --------------------------------------------------------------------------------------
# tables over runs: a row per experiment, numbers from the kept evaluations
# --------------------------------------------------------------------------------------

CHECKPOINTS = ("best", "last")
TABLE_FORMATS = ("md", "csv", "json", "latex")
#: what a table adds to a run's experiment: what the evaluation it shows measured. They stand in
#: for the experiment's own evaluation settings, which only say what `advc run` evaluates.
MEASURED = ("n", "eval eps", "attacks")
RUN_EVALUATION = ("eval.n", "eval.eps", "evaluate")
_NOT_A_RUN = "not an advc run folder: no run.json"  # the wording of advc.runtime.run.NOT_A_RUN
_RUN_FOLDERS = "name a folder written by advc run, or a folder holding such folders"
_NOT_A_RUN_HINT = f"{_RUN_FOLDERS}; a run from before run.json was recorded has no experiment to group by: run it again"


@dataclass(frozen=True)
class RunRecord:
    """What a table reads of a run folder's ``run.json``: which experiment, which seed, which advc."""

    path: Path
    seed: int
    experiment_id: str
    experiment: dict[str, Any]  # every setting but the seed (run.json's "experiment")
    advc_version: str

    @property
    def objective(self) -> str:
        return str(self.experiment["objective"])


def read_run(run_dir: str | os.PathLike[str]) -> RunRecord:
    """A run folder's experiment record (``run.json``, checked by ``advc.runtime.run.read_run_record``)."""
    from advc.runtime.run import read_run_record

    data = read_run_record(Path(run_dir), rebuild=False)
    return RunRecord(Path(run_dir), data["seed"], data["experiment_id"], data["experiment"], data["advc_version"])


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The run folders named, a folder holding run folders (a sweep) standing for every run folder
    one level down. A folder that is no run -- or a run folder from before ``run.json`` -- is refused."""
    from advc.runtime.run import RUN_RECORD

    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UserError("no such run folder", where=str(path), hint=_RUN_FOLDERS)
        if (path / RUN_RECORD).is_file():
            found.append(path)
            continue
        below = sorted(p for p in path.iterdir() if p.is_dir())
        runs = [p for p in below if (p / RUN_RECORD).is_file()]
        for p in below:  # a run of an older advc among them: refused, never silently dropped
            if p not in runs and any((p / name).exists() for name in ("checkpoints", RESULTS_FILE, "metrics.jsonl")):
                raise UserError(_NOT_A_RUN, where=str(p), hint=_NOT_A_RUN_HINT)
        if not runs:
            raise UserError(_NOT_A_RUN, where=str(path), hint=_NOT_A_RUN_HINT)
        found += runs
    return found


def canonical_attacks(text: str, where: str = "--attacks") -> str:
    """An evaluate list as advc writes it (``natural pgd(steps = 20)``): checked like ``advc eval
    --attacks``, so spacing and spelt-out defaults do not make two lists different."""
    from advc.compiler.check import check_attacks
    from advc.compiler.lower import eval_text

    return " ".join(eval_text(a) for a in check_attacks(text, where))


@dataclass(frozen=True)
class Measurement:
    """One run's numbers for one checkpoint: the kept evaluation a table shows."""

    run: RunRecord
    checkpoint: str
    evaluation: Mapping[str, Any]
    attacks: str  # the evaluation's attack list, canonical
    cost: Mapping[str, float] = field(default_factory=dict)  # COST_COLUMNS, when asked for and recorded

    @property
    def results(self) -> Mapping[str, float]:
        return {**self.evaluation["results"], **self.cost}

    def settings(self) -> dict[str, Any]:
        """The experiment's settings, with what this evaluation measured for its evaluation settings."""
        shown = {k: v for k, v in self.run.experiment.items() if k not in RUN_EVALUATION}
        shown.update({"n": self.evaluation["n"], "eval eps": self.evaluation["eps"], "attacks": self.attacks})
        return shown


@dataclass
class Group:
    """Runs of one experiment measured alike (checkpoint, n, ε, attacks): their seeds average."""

    experiment_id: str
    checkpoint: str
    settings: dict[str, Any]
    members: list[Measurement]

    @property
    def seeds(self) -> list[int]:
        return [m.run.seed for m in self.members]

    @property
    def runs(self) -> list[str]:
        return [str(m.run.path) for m in self.members]

    @property
    def labels(self) -> list[str]:
        return order_columns(label for m in self.members for label in m.results)

    def values(self, label: str) -> list[float]:
        """The label's number per seed, in seed order; none unless every seed has it (a mean over
        some of the seeds would pass for a mean over all)."""
        if not all(label in m.results for m in self.members):
            return []
        return [m.results[label] for m in self.members]


@dataclass
class Collected:
    """Run folders read for a table or a plot: the runs, their groups, and what a reader must know."""

    runs: list[RunRecord]
    groups: list[Group]
    notes: list[str]
    warnings: list[str]  # the sanity checks that warned, one line each


def _frozen(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _choose(run: RunRecord, evaluations: Sequence[Mapping[str, Any]], checkpoint: str,
            wanted: str | None) -> tuple[Mapping[str, Any] | None, bool]:
    """The evaluation a table shows for one checkpoint, and whether it is what was asked for.

    With ``wanted``: the newest of that attack list. Otherwise the newest of the run's own evaluate
    list (its labels are the experiment's "evaluate"; where `advc run` kept one, its exact text
    decides), else the newest of any kind."""
    mine = [e for e in evaluations if e["checkpoint"] == checkpoint]
    if wanted is not None:
        same = [e for e in mine if e["canonical"] == wanted]
        return (same[-1] if same else None), True
    own = [e for e in mine if " ".join(e["results"]) == run.experiment.get("evaluate")]
    by_run = [e for e in own if e.get("by") == "advc run"]
    if by_run:
        own = [e for e in own if e["canonical"] == by_run[-1]["canonical"]]
    if own:
        return own[-1], True
    return (mine[-1] if mine else None), False


def training_cost(run: RunRecord) -> dict[str, float] | str:
    """The run's :data:`COST_COLUMNS` from its ``metrics.jsonl``, or why there are none: every
    epoch of the experiment's ``train.epochs`` must be recorded once, with finite numbers."""
    epochs = run.experiment.get("train.epochs")
    rows = read_metrics(run.path)
    if not isinstance(epochs, int) or [r.get("epoch") for r in rows] != list(range(epochs)):
        return f"metrics.jsonl does not record epochs 0-{epochs - 1 if isinstance(epochs, int) else '?'} once each"
    total = {"BPs/sample": 0.0, "train s": 0.0}
    for row in rows:
        for label, key in (("BPs/sample", "bps_per_sample"), ("train s", "seconds")):
            value = row.get(key)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                return f"metrics.jsonl epoch {row['epoch']}: {key} is not a finite number >= 0"
            total[label] += value
    return total


def collect(paths: Iterable[str | os.PathLike[str]], *, attacks: str | None = None,
            checkpoints: Sequence[str] = CHECKPOINTS, cost: bool = False) -> Collected:
    """Read run folders (see :func:`find_run_dirs`), choose each checkpoint's evaluation and group
    the runs: one group per experiment, checkpoint and measurement (n, ε, attacks). With ``cost``
    each measurement also carries its run's :func:`training_cost`.

    The same experiment with the same seed twice is refused: counting one seed twice would
    shrink the std."""
    runs = [read_run(p) for p in find_run_dirs(paths)]
    seen: dict[tuple[str, int], RunRecord] = {}
    for run in runs:
        key = (run.experiment_id, run.seed)
        if key in seen:
            raise UserError(f"two runs of experiment {run.experiment_id} with seed {run.seed}",
                            where=f"{seen[key].path} and {run.path}",
                            hint="pass each run once; runs of one experiment differ only in train.seed")
        seen[key] = run
    wanted = canonical_attacks(attacks) if attacks is not None else None
    canonical: dict[str, str] = {}

    def canon(text: str) -> str:  # a kept list an older advc wrote may no longer check: kept as written
        if text not in canonical:
            try:
                canonical[text] = canonical_attacks(text, "<evaluation>")
            except AdvcError:
                canonical[text] = text
        return canonical[text]

    measured: list[Measurement] = []
    notes: list[str] = []
    warnings: list[str] = []
    missing: dict[str, list[str]] = {}
    for run in runs:
        evaluations = [dict(e, canonical=canon(e["attacks"])) for e in load_evaluations(run.path)]
        spent = training_cost(run) if cost else {}
        if isinstance(spent, str):
            notes.append(f"{run.path}: no training cost: {spent}")
            spent = {}
        for checkpoint in checkpoints:
            chosen, asked = _choose(run, evaluations, checkpoint, wanted)
            if chosen is None:
                missing.setdefault(checkpoint, []).append(str(run.path))
                continue
            if not asked:
                notes.append(f"{run.path} ({checkpoint}): no kept evaluation of its own evaluate list "
                             f"({run.experiment.get('evaluate')}); shown: its newest, {chosen['canonical']}")
            measured.append(Measurement(run, checkpoint, chosen, chosen["canonical"], spent))
            for check in chosen.get("sanity", []):
                if check["status"] == "warn":
                    warnings.append(f"{run.path} ({run.objective} seed {run.seed}, {checkpoint}) "
                                    f"`{check['name']}`: {check.get('detail', '')}")
    what = f" with the attacks '{wanted}'" if wanted else ""
    for checkpoint, left in missing.items():
        if len(left) < len(runs):  # (when no run has it, the caller says so)
            notes.append(f"left out of {checkpoint} (no kept evaluation{what}): {', '.join(left)}")
    groups = _group(measured)
    differences = Differences.of([g.settings for g in groups])
    for experiment_id in dict.fromkeys(g.experiment_id for g in groups):
        members = {m.run.path: m.run for g in groups if g.experiment_id == experiment_id for m in g.members}
        versions: dict[str, list[str]] = {}
        for run in members.values():
            versions.setdefault(run.advc_version, []).append(str(run.path))
        if len(versions) > 1:
            name = differences.describe(next(g.settings for g in groups if g.experiment_id == experiment_id))
            listed = "; ".join(f"{v} ({', '.join(p)})" for v, p in versions.items())
            notes.append(f"{name} averages runs of different advc versions: {listed}")
    return Collected(runs, groups, notes, warnings)


def _group(measured: Sequence[Measurement]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for m in measured:
        e = m.evaluation
        key = (m.run.experiment_id, m.checkpoint, e["n"], e["eps"], m.attacks)
        if key not in groups:
            groups[key] = Group(m.run.experiment_id, m.checkpoint, m.settings(), [])
        groups[key].members.append(m)
    for g in groups.values():
        g.members.sort(key=lambda m: m.run.seed)
    distinguish([(g.experiment_id, g.settings, g.members[0].run.experiment) for g in groups.values()])
    return list(groups.values())


def distinguish(items: Sequence[tuple[str, dict[str, Any], Mapping[str, Any]]]) -> None:
    """``(experiment_id, shown settings, full experiment)`` per item: different experiments whose
    shown settings agree (they differ only in what `advc run` would evaluate, or their identity was
    computed by another advc) get the settings that tell them apart added to every item's shown
    ones -- no two rows, no two legend entries look the same."""
    by_shown: dict[str, dict[str, Mapping[str, Any]]] = {}
    for experiment_id, shown, full in items:
        by_shown.setdefault(_frozen(shown), {}).setdefault(experiment_id, full)
    extra: list[str] = []
    for same in by_shown.values():
        if len(same) > 1:
            keys = differing_keys(list(same.values())) or ["experiment"]
            extra += [k for k in keys if k not in extra]
    for experiment_id, shown, full in items:
        for k in extra:
            shown[k] = experiment_id if k == "experiment" else full.get(k)


def differing_keys(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys whose values are not the same in all of ``settings`` (a key one lacks differs), in
    the order they first appear (run.json's order: objective, threat, attack, ... train)."""
    keys = dict.fromkeys(k for s in settings for k in s)
    return [k for k in keys if len({_frozen(s.get(k)) for s in settings}) > 1]


def short_names(keys: Sequence[str], context: Iterable[str] = ()) -> dict[str, str]:
    """Column names for dotted keys: the shortest tail that no other key -- of ``keys`` or of
    ``context``, every setting a reader might think of -- ends with (``threat.eps`` -> ``eps``;
    beside ``eval.eps`` both stay whole; ``attack.loss`` stays whole beside ``loss``)."""
    others = set(keys) | set(context)
    out = {}
    for key in keys:
        parts = key.split(".")
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in others):
                break
        out[key] = tail
    return out


def value_formatter(values: Iterable[Any]) -> Callable[[Any], str]:
    """How a column of setting values prints: numbers to 4 significant digits, unless that makes two
    different values look alike -- then every value in full."""

    def short(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "true" if v else "false"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def full(v: Any) -> str:
        return v if isinstance(v, str) else "-" if v is None else json.dumps(v)

    distinct = {_frozen(v): v for v in values}
    return short if len({short(v) for v in distinct.values()}) == len(distinct) else full


@dataclass
class Differences:
    """The settings that differ between experiments, and how tables and legends print them."""

    keys: list[str]
    short: dict[str, str]
    formats: dict[str, Callable[[Any], str]]
    same_as: dict[str, str] = field(default_factory=dict)  # a measured setting -> the shown one it repeats

    @classmethod
    def of(cls, settings: Sequence[Mapping[str, Any]], also: Sequence[str] = ()) -> Differences:
        """``also``: keys shown elsewhere (a pivot's), named so that no short name is ambiguous.

        A measured setting that repeats another differing setting everywhere (the evaluated ε
        beside threat.eps) is not a difference of its own: it is said once, as ``same_as``."""
        keys = [k for k in differing_keys(settings) if k != "objective"]
        same_as = {}
        for key in [k for k in keys if k in MEASURED]:
            twin = next((j for j in keys if j not in MEASURED and all(s.get(j) == s.get(key) for s in settings)),
                        None)
            if twin is not None:
                same_as[key] = twin
        keys = [k for k in keys if k not in same_as]
        short = short_names([*keys, *also, *same_as], context=[*(k for s in settings for k in s), *MEASURED])
        return cls(keys, short, {k: value_formatter(s.get(k) for s in settings) for k in keys}, same_as)

    def text(self, key: str, value: Any) -> str:
        return self.formats.get(key, value_formatter([value]))(value)

    def order(self, settings: Mapping[str, Any]) -> tuple:
        """Sort key: the differing settings' values, numbers by size (so ε ascends)."""
        return tuple(_sort_key(settings.get(k)) for k in self.keys)

    def describe(self, settings: Mapping[str, Any]) -> str:
        """``quickstart (eps=0.05, epochs=2)``: the objective and what sets it apart."""
        parts = [f"{self.short[k]}={self.text(k, settings.get(k))}" for k in self.keys]
        name = str(settings.get("objective", "-"))
        return f"{name} ({', '.join(parts)})" if parts else name


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, float(value))
    return (2, str(value))


@dataclass
class TableRow:
    """One printed row: its settings, its checkpoint and, per column header, the group measured."""

    settings: dict[str, Any]
    checkpoint: str
    cells: dict[str, Group]

    def seeds_text(self) -> str:
        counts = sorted({len(g.members) for g in self.cells.values()})
        many = "s" if counts[-1] != 1 else ""
        return f"{counts[0]} seed{many}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"


@dataclass
class Column:
    header: str
    attack: str  # the evaluation's label: "PGD-20"
    by_value: Any = None


@dataclass
class Table:
    """Everything a table prints, in any format (see :func:`merge_runs`)."""

    rows: list[TableRow]
    columns: list[Column]
    differences: Differences
    notes: list[str]
    warnings: list[str]
    common: dict[str, Any]  # measured settings every row shares (the caption says them)
    by: str | None = None
    same_as: dict[str, str] = field(default_factory=dict)  # a setting -> the shown one it equals in every row


def build_table(paths: Iterable[str | os.PathLike[str]], *, attacks: str | None = None,
                checkpoint: str = "both", by: str | None = None, cost: bool = False) -> Table:
    """Rows per experiment and checkpoint (see :func:`merge_runs`)."""
    if checkpoint not in (*CHECKPOINTS, "both"):
        raise UserError(f"unknown checkpoint {checkpoint!r}", where="--checkpoint", hint="best, last or both")
    paths = list(paths)
    if not paths:
        raise UserError("no run folders given", where="advc table", hint="name run folders or a sweep folder")
    got = collect(paths, attacks=attacks, checkpoints=CHECKPOINTS if checkpoint == "both" else (checkpoint,),
                  cost=cost)
    if not got.groups:
        what = f" of the {checkpoint} checkpoint" if checkpoint != "both" else ""
        attacks_text = f" --attacks '{canonical_attacks(attacks)}'" if attacks is not None else ""
        raise UserError(f"no run has a kept evaluation{what}{' with these attacks' if attacks_text else ''}",
                        where=", ".join(map(str, paths)), hint=f"evaluate first: advc eval RUN{attacks_text}")
    groups = got.groups
    same_as_by: list[str] = []
    if by is None:
        rows = [TableRow(g.settings, g.checkpoint, dict.fromkeys(g.labels, g)) for g in groups]
        columns = [Column(label, label) for label in order_columns(x for g in groups for x in g.labels)]
        differences = Differences.of([r.settings for r in rows])
    else:
        rows, columns, differences, same_as_by = _pivot(groups, by)
    same_as = {**dict.fromkeys(same_as_by, by), **differences.same_as}  # said once, in the caption
    order = list(dict.fromkeys(r.settings.get("objective") for r in rows))
    rows.sort(key=lambda r: (order.index(r.settings.get("objective")), differences.order(r.settings),
                             CHECKPOINTS.index(r.checkpoint) if r.checkpoint in CHECKPOINTS else 2))
    common = {}
    for key in MEASURED:
        values = {_frozen(r.settings.get(key)) for r in rows}
        if key not in differences.keys and key != by and key not in same_as and len(values) == 1:
            common[key] = rows[0].settings.get(key)
    return Table(rows, columns, differences, got.notes, got.warnings, common, by, same_as)


def _pivot(groups: Sequence[Group], by: str) -> tuple[list[TableRow], list[Column], Differences, list[str]]:
    """One column group per value of ``by``; settings that always equal that value (the evaluated ε
    beside threat.eps) fold into it, every other setting still splits rows."""
    present = list(dict.fromkeys(k for g in groups for k in g.settings))
    if by == "train.seed":
        raise UserError("runs of one experiment average over train.seed; --by pivots on a setting of the "
                        "experiment", where="--by train.seed", hint="e.g. --by threat.eps")
    if by not in present:
        differ = [k for k in differing_keys([g.settings for g in groups]) if k != "objective"]
        raise UserError(f"no run has the setting {by!r}", where="--by",
                        hint=f"settings that differ between these runs: {', '.join(differ) or 'none'}")
    varies = len({_frozen(g.settings.get(by)) for g in groups}) > 1  # else any setting of that value would fold
    same_as_by = [k for k in present if k != by and (k in MEASURED or varies)
                  and all(g.settings.get(k) == g.settings.get(by) for g in groups)]
    rows: dict[tuple[str, str], TableRow] = {}
    placed: list[tuple[TableRow, Group]] = []
    for g in groups:
        kept = {k: v for k, v in g.settings.items() if k != by and k not in same_as_by}
        row = rows.setdefault((_frozen(kept), g.checkpoint), TableRow(kept, g.checkpoint, {}))
        placed.append((row, g))
    differences = Differences.of([r.settings for r in rows.values()], also=[by])
    values = sorted({_frozen(g.settings.get(by)): g.settings.get(by) for g in groups}.values(), key=_sort_key)
    fmt = value_formatter(values)
    name = differences.short[by]

    def header(label: str, value: Any) -> str:
        return f"{label} @ {name}={fmt(value)}"

    for row, g in placed:
        for label in g.labels:
            row.cells[header(label, g.settings.get(by))] = g
    columns = [Column(header(label, v), label, v) for v in values
               for label in order_columns(x for g in groups if _frozen(g.settings.get(by)) == _frozen(v)
                                          for x in g.labels)]
    return list(rows.values()), columns, differences, same_as_by


def merge_runs(run_dirs: Iterable[str | os.PathLike[str]], *, attacks: str | None = None,
               checkpoint: str = "both", by: str | None = None, format: str = "md", cost: bool = False) -> str:
    """One table over run folders (or folders holding run folders): the text ``advc table`` prints.

    Rows are experiments (``run.json``'s experiment_id, never the spec's name) per checkpoint; the
    seeds of one experiment average into one row (mean ± sample std, and the seed count). The
    settings that differ between rows are columns, so a reader sees what changed. The numbers are
    the kept evaluations: the newest of each run's own evaluate list (else its newest of any kind),
    or with ``attacks`` the newest of that list; runs averaged together also agree on the
    evaluation's n and ε. ``by`` pivots: one column group per value of that setting. ``cost`` adds
    :data:`COST_COLUMNS` (what training cost, from each run's metrics.jsonl).
    ``format``: md (default), csv, json or latex. Notes (left-out runs, mixed advc versions) and
    sanity warnings follow the table (as ``#``/``%`` comment lines in CSV/LaTeX, keys in JSON).
    """
    if format not in TABLE_FORMATS:
        raise UserError(f"unknown table format {format!r}", where="--format", hint="md, csv, json or latex")
    table = build_table(run_dirs, attacks=attacks, checkpoint=checkpoint, by=by, cost=cost)
    render = {"md": _table_markdown, "csv": _table_csv, "json": _table_json, "latex": _table_latex}[format]
    return render(table)


def _setting_cells(table: Table, row: TableRow) -> list[str]:
    objective = [] if table.by == "objective" else [str(row.settings.get("objective", "-"))]
    return [*objective, *(table.differences.text(k, row.settings.get(k)) for k in table.differences.keys)]


def _setting_header(table: Table, *, full: bool = False) -> list[str]:
    objective = [] if table.by == "objective" else ["objective" if full else "Objective"]
    return [*objective, *(k if full else table.differences.short[k] for k in table.differences.keys)]


def _caption(table: Table) -> str:
    parts = [f"{k}={table.differences.text(k, v) if k != 'attacks' else v}" for k, v in table.common.items()]
    parts += [f"{table.differences.short.get(k, k)} = {table.differences.short.get(j, j)}"
              for k, j in table.same_as.items()]
    text = "Test accuracy (%), mean ± sample std over seeds" + (f"; {', '.join(parts)}" if parts else "") + "."
    if any(c.attack in COST_COLUMNS for c in table.columns):
        text += (" BPs/sample: backward passes per training sample over all epochs; train s: the epochs'"
                 " wall seconds on the machine that ran them.")
    return text


def _table_markdown(table: Table) -> str:
    header = [*_setting_header(table), "Checkpoint", "Seeds", *(c.header for c in table.columns)]
    body = [[*_setting_cells(table, row), row.checkpoint, row.seeds_text(),
             *(format_cell(row.cells[c.header].values(c.attack)) if c.header in row.cells else "-"
               for c in table.columns)] for row in table.rows]
    text = _markdown(header, body) + "\n" + _caption(table) + "\n"
    if table.notes:
        text += "\nNotes:\n\n" + "".join(f"- {n}\n" for n in table.notes)
    if table.warnings:
        text += "\nSanity warnings:\n\n" + "".join(f"- ⚠️ {w}\n" for w in table.warnings)
    return text


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _table_csv(table: Table) -> str:
    import csv
    import io

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow([*_setting_header(table, full=True), "checkpoint", "seeds",
                  *(h for c in table.columns for h in (c.header, f"{c.header} std"))])
    for row in table.rows:
        counts = sorted({len(g.members) for g in row.cells.values()})
        cells = []
        for c in table.columns:
            values = row.cells[c.header].values(c.attack) if c.header in row.cells else []
            mean, std = _mean_std(values) if values else (None, None)
            cells += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        out.writerow([*_setting_cells(table, row), row.checkpoint,
                      counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}", *cells])
    text = buf.getvalue()
    text += "".join(f"# {line}\n" for line in [_caption(table), *table.notes, *table.warnings])
    return text


def _table_json(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells = []
        for c in table.columns:
            if c.header not in row.cells:
                continue
            g = row.cells[c.header]
            values = g.values(c.attack)
            if not values:
                continue
            mean, std = _mean_std(values)
            cells.append({"column": c.header, "attack": c.attack,
                          "by": None if table.by is None else {table.by: c.by_value},
                          "mean": mean, "std": std, "values": values, "seeds": g.seeds, "runs": g.runs,
                          "experiment_id": g.experiment_id})
        rows.append({"objective": row.settings.get("objective"), "checkpoint": row.checkpoint,
                     "settings": row.settings, "cells": cells})
    data = {"format": "advc-table", "version": 1, "by": table.by, "columns": [c.header for c in table.columns],
            "differing": {k: table.differences.short[k] for k in table.differences.keys}, "rows": rows,
            "caption": _caption(table), "notes": table.notes, "sanity_warnings": table.warnings}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _tex(text: str) -> str:
    """Text made safe for LaTeX (the few symbols advc's labels use become math)."""
    out = []
    for ch in str(text):
        if ch in "&%$#_{}":
            out.append("\\" + ch)
        else:
            out.append({"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                        "∞": r"$\infty$", "ε": r"$\varepsilon$", "±": r"$\pm$", "–": "--"}.get(ch, ch))
    return "".join(out)


def _tex_cell(values: Sequence[float]) -> str:
    if not values:
        return "--"
    mean, std = _mean_std(values)
    return f"${mean:.2f}$" if std is None else f"${mean:.2f} \\pm {std:.2f}$"


def _table_latex(table: Table) -> str:
    """A booktabs ``tabular``; a pivot gets a header row per value with ``\\cmidrule``s."""
    settings = _setting_header(table)
    lead = len(settings) + 2  # + checkpoint, seeds
    lines = [r"\begin{tabular}{" + "l" * (lead - 1) + "r" + "r" * len(table.columns) + "}", r"\toprule"]
    if table.by is not None:
        spans: list[tuple[Any, int]] = []
        for c in table.columns:
            if spans and _frozen(spans[-1][0]) == _frozen(c.by_value):
                spans[-1] = (c.by_value, spans[-1][1] + 1)
            else:
                spans.append((c.by_value, 1))
        name = table.differences.short[table.by]
        fmt = value_formatter(v for v, _ in spans)
        tops, rules, start = [], [], lead + 1
        for value, width in spans:
            tops.append(f"\\multicolumn{{{width}}}{{c}}{{{_tex(name)} $=$ {_tex(fmt(value))}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join([""] * lead + tops) + r" \\")
        lines.append(" ".join(rules))
        attacks = [c.attack for c in table.columns]
    else:
        attacks = [c.header for c in table.columns]
    lines.append(" & ".join(_tex(h) for h in [*settings, "Checkpoint", "Seeds", *attacks]) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        cells = [_tex(x) for x in [*_setting_cells(table, row), row.checkpoint, row.seeds_text().split()[0]]]
        cells += [_tex_cell(row.cells[c.header].values(c.attack) if c.header in row.cells else [])
                  for c in table.columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {line}" for line in [_caption(table), *table.notes, *table.warnings]]
    return "\n".join(lines) + "\n"
