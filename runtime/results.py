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
:func:`merge_runs` groups run folders by spec and checkpoint and does exactly that.

This module imports no torch: reading and tabulating results must work anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advc.errors import UserError
from advc.files import atomic_write_text

__all__ = [
    "CANONICAL_COLUMNS",
    "EVALUATIONS",
    "RESULTS_FILE",
    "Row",
    "RunResults",
    "evaluation_key",
    "format_cell",
    "load_evaluations",
    "load_results",
    "merge_runs",
    "results_json",
    "results_markdown",
    "run_markdown",
    "sanity_markdown",
    "write_evaluation",
    "write_results",
]

RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"

#: Column order of the papers' tables (FAT Table 1, GAIRAT Table 1) plus AutoAttack.
CANONICAL_COLUMNS: tuple[str, ...] = ("Natural", "FGSM", "PGD-20", "CW∞", "PGD-100", "AA")


@dataclass
class Row:
    """One table row: ``name`` (a checkpoint such as "best", or a spec) and, per column
    label, an accuracy or a list of accuracies (one per seed)."""

    name: str
    values: Mapping[str, float | Sequence[float]] = field(default_factory=dict)


def _columns(rows: Sequence[Row]) -> list[str]:
    present: list[str] = []
    for row in rows:
        for label in row.values:
            if label not in present:
                present.append(label)
    canonical = [c for c in CANONICAL_COLUMNS if c in present]
    return canonical + [c for c in present if c not in CANONICAL_COLUMNS]


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
    header = [first_column, *columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        cells = [row.name, *(format_cell(row.values.get(c)) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
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


def merge_runs(run_dirs: Iterable[str | os.PathLike[str]]) -> str:
    """One Markdown table over several runs: a row per (spec, checkpoint), each cell the
    mean ± sample std over the runs' seeds (a single seed prints its plain value).

    Rows keep the order in which specs and checkpoints first appear. Two runs of the same
    spec with the same seed are refused (counting one seed twice would shrink the std).
    Sanity warnings of any run are listed under the table.
    """
    runs = [load_results(d) for d in run_dirs]
    seen: dict[tuple[str, int], Path | None] = {}
    grouped: dict[tuple[str, str], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str], int] = {}
    warnings: list[str] = []
    for run in runs:
        key = (run.spec, run.seed)
        if key in seen:
            raise UserError(
                f"two results for spec {run.spec!r} with seed {run.seed}",
                where=f"{seen[key]} and {run.path}",
                hint="pass each run folder once",
            )
        seen[key] = run.path
        for checkpoint, cols in run.checkpoints.items():
            cells = grouped.setdefault((run.spec, checkpoint), {})
            seeds[(run.spec, checkpoint)] = seeds.get((run.spec, checkpoint), 0) + 1
            for label, value in cols.items():
                cells.setdefault(label, []).append(value)
        for checkpoint, checks in run.sanity.items():
            for check in checks:
                if check["status"] == "warn":
                    warnings.append(
                        f"- ⚠️ {run.spec} seed {run.seed} ({checkpoint}) "
                        f"`{check['name']}`: {check.get('detail', '')}"
                    )
    rows = []
    for (spec, checkpoint), cells in grouped.items():
        k = seeds[(spec, checkpoint)]
        rows.append(Row(f"{spec} ({checkpoint}, {k} seed{'s' if k != 1 else ''})", cells))
    text = results_markdown(rows)
    if warnings:
        text += "\nSanity warnings:\n\n" + "\n".join(warnings) + "\n"
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
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": by, "advc_version": __version__,
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
