"""Figures across runs (``advc plot``): the papers' figures, drawn from run folders.

Three figures, each written as PNG and SVG (text kept as text, so the SVG is searchable and
editable) with matplotlib's Agg backend:

- ``accuracy_vs_eps``: test accuracy against the training ε (``threat.eps``), one panel per
  evaluation column (Natural, PGD-20, ...), one line per experiment group that differs in
  anything but ε and the seed, mean ± sample std over seeds as a band -- FAT's figure;
- ``natural_vs_robust``: natural against robust accuracy (PGD-20 when evaluated), one point per
  experiment with error bars over seeds, one marker shape per objective;
- ``training_curves``: validation PGD-20 accuracy, training loss and backward passes (BPs) per
  sample for each epoch, from ``metrics.jsonl``, mean ± std over the seeds of each experiment.

The runs are read and grouped exactly as ``advc table`` reads them (:func:`advc.runtime.results.collect`:
experiments from ``run.json``, numbers from the kept evaluations), and legends name experiments
the way the table's columns do: the objective and the settings that differ between them, never
a folder name. Nothing here imports torch.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advc.errors import UserError
from advc.runtime.folders import read_metrics
from advc.runtime.results import (
    CHECKPOINTS,
    RUN_EVALUATION,
    Differences,
    Group,
    RunRecord,
    canonical_attacks,
    collect,
    distinguish,
    order_columns,
)

__all__ = ["FIGURES", "Figure", "plot_runs"]

FIGURES = ("accuracy_vs_eps", "natural_vs_robust", "training_curves")
#: the robust column of natural_vs_robust: the first of these evaluated, else any but Natural
ROBUST_PREFERENCE = ("PGD-20", "AA", "PGD-100", "CW∞")
#: training curves: metrics.jsonl key -> axis label
CURVES = (("val_pgd20", "validation PGD-20 accuracy (%)"), ("loss", "training loss"),
          ("bps_per_sample", "BPs per sample"))


@dataclass
class Figure:
    """One figure: the files written, and the legend's texts as matplotlib drew them (or why not drawn)."""

    name: str
    files: list[Path] = field(default_factory=list)
    legend: list[str] = field(default_factory=list)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    #: what was drawn: panel -> legend entry -> points, (x, mean, std) each ((x, std, y, std) for a scatter)
    data: dict[str, dict[str, list[tuple[float, ...]]]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What ``advc plot`` prints about it."""
        if self.skipped is not None:
            return [f"skipped {self.name}: {self.skipped}"]
        return [f"wrote {p}" for p in self.files] + [f"note ({self.name}): {n}" for n in self.notes]


def plot_runs(paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
              attacks: str | None = None, checkpoint: str = "best") -> dict[str, Figure]:
    """Draw every figure that the runs have data for into ``out``; returns them by name.

    ``attacks`` and ``checkpoint`` choose the kept evaluation as ``advc table`` does. A figure
    without data is skipped with its reason; nothing to draw at all is an error."""
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"unknown checkpoint {checkpoint!r}", where="--checkpoint", hint="best or last")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("--out names a file", where=str(out), hint="name a folder for the figures")
    paths = list(paths)
    got = collect(paths, attacks=attacks, checkpoints=(checkpoint,))
    if attacks is not None and not got.groups:
        raise UserError("no run has a kept evaluation with these attacks", where=", ".join(map(str, paths)),
                        hint=f"evaluate first: advc eval RUN --attacks '{canonical_attacks(attacks)}'")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.fonttype": "none", "figure.dpi": 110}):
        figures = [_accuracy_vs_eps(got.groups, out, checkpoint), _natural_vs_robust(got.groups, out, checkpoint),
                   _training_curves(got.runs, out)]
    if not any(f.files for f in figures):
        raise UserError("nothing to plot: " + "; ".join(f"{f.name}: {f.skipped}" for f in figures),
                        where=", ".join(map(str, paths)), hint="train with advc run (it evaluates and logs metrics)")
    return {f.name: f for f in figures}


# --------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------


def _style(i: int) -> dict[str, Any]:
    """Colour and line style of the i-th line: ten colours, then dashed, dotted, ..."""
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[i // 10 % 4]}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _save(fig, axes, out: Path, name: str) -> Figure:
    """One legend for the whole figure (below it), then PNG and SVG written atomically."""
    import matplotlib.pyplot as plt

    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    longest = max((len(label) for label in handles), default=0)
    columns = 1 if longest > 45 else 2 if longest > 25 else 3
    legend = fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                        ncols=min(columns, max(1, len(handles))), fontsize="small")
    written = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, format=ext, bbox_inches="tight")  # (the legend may be wider than the axes)
        os.replace(tmp, path)
        written.append(path)
    texts = [t.get_text() for t in legend.get_texts()]
    plt.close(fig)
    return Figure(name, written, texts)


def _order(differences: Differences, settings: dict[str, Any]) -> tuple:
    """Legend order: by objective name, then as the table sorts its rows (ε ascending, ...)."""
    return (str(settings.get("objective")), differences.order(settings))


def _follows(key: str, eps: str, groups: Sequence[Group]) -> bool:
    """Whether ``key`` is a function of ε within each objective (one value per ε), and changes
    with it somewhere: e.g. a step size written as a fraction of ε. A key that takes two values
    at one ε is a difference of its own."""
    seen: dict[tuple[str, Any], Any] = {}
    for g in groups:
        value = g.settings.get(key)
        if seen.setdefault((str(g.settings.get("objective")), g.settings[eps]), value) != value:
            return False
    by_objective: dict[str, set[str]] = {}
    for (objective, _), value in seen.items():
        by_objective.setdefault(objective, set()).add(repr(value))
    return any(len(values) > 1 for values in by_objective.values())


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# the figures
# --------------------------------------------------------------------------------------


def _accuracy_vs_eps(groups: Sequence[Group], out: Path, checkpoint: str) -> Figure:
    name = "accuracy_vs_eps"
    if not groups:
        return Figure(name, skipped=f"no run has a kept evaluation of its {checkpoint} checkpoint")
    eps = "threat.eps"
    drawn = [g for g in groups if _numeric(g.settings.get(eps))]
    left = [r for g in groups if g not in drawn for r in g.runs]
    notes = [f"left out (threat.eps is not a number): {', '.join(left)}"] if left else []
    if len({g.settings[eps] for g in drawn}) < 2:
        return Figure(name, skipped="the runs have fewer than two values of threat.eps")
    # a line per group of experiments that differ only in ε: settings equal to ε everywhere (the
    # evaluated ε) go with it, and so do settings that follow it (step_size = eps / 4 resolves to
    # one number per ε)
    keys = [k for k in dict.fromkeys(k for g in drawn for k in g.settings) if k != eps]
    same = [k for k in keys if all(g.settings.get(k) == g.settings[eps] for g in drawn)]
    follows = [k for k in keys if k not in same and _follows(k, eps, drawn)]
    if follows:
        notes.append(f"within each line, {', '.join(follows)} follow{'s' if len(follows) == 1 else ''} ε")
    same += follows
    lines: dict[str, tuple[dict[str, Any], list[Group]]] = {}
    for g in drawn:
        identity = {k: v for k, v in g.settings.items() if k != eps and k not in same}
        lines.setdefault(repr(sorted(identity.items(), key=str)), (identity, []))[1].append(g)
    differences = Differences.of([identity for identity, _ in lines.values()], also=[eps])
    lines = dict(sorted(lines.items(), key=lambda item: _order(differences, item[1][0])))
    labels = order_columns(x for g in drawn for x in g.labels)

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels) + 0.6, 4.4), squeeze=False,
                             layout="constrained")
    evaluated = "evaluated at the training ε" if "eval eps" in same else "evaluated at the kept evaluation's ε"
    data: dict[str, dict[str, list[tuple[float, ...]]]] = {}
    for ax, label in zip(axes[0], labels):
        for i, (identity, members) in enumerate(lines.values()):
            points = sorted((g.settings[eps], g.values(label)) for g in members if g.values(label))
            if not points:
                continue
            xs = [x for x, _ in points]
            stats = [_mean_std(v) for _, v in points]
            style = _style(i)
            legend = differences.describe(identity)
            data.setdefault(label, {})[legend] = [(x, m, s) for x, (m, s) in zip(xs, stats)]
            ax.plot(xs, [m for m, _ in stats], marker="o", label=legend, **style)
            ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats], color=style["color"],
                            alpha=0.18, linewidth=0)
        ax.set_title(label)
        ax.set_xlabel("threat.eps (training ε)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    along = f"; {', '.join(follows)} follow{'s' if len(follows) == 1 else ''} ε" if follows else ""
    fig.suptitle(f"test accuracy vs ε, {checkpoint} checkpoint, {evaluated}; mean ± std over seeds{along}",
                 fontsize="medium")
    figure = _save(fig, axes[0], out, name)
    figure.notes, figure.data = notes, data
    return figure


def _natural_vs_robust(groups: Sequence[Group], out: Path, checkpoint: str) -> Figure:
    name = "natural_vs_robust"
    labels = order_columns(x for g in groups for x in g.labels)
    if "Natural" not in labels:
        return Figure(name, skipped=f"no kept evaluation of the {checkpoint} checkpoint has Natural")
    robust = next((x for x in ROBUST_PREFERENCE if x in labels), next((x for x in labels if x != "Natural"), None))
    if robust is None:
        return Figure(name, skipped="the kept evaluations have no attack besides Natural")
    points = [g for g in groups if g.values("Natural") and g.values(robust)]
    differences = Differences.of([g.settings for g in points])
    points.sort(key=lambda g: _order(differences, g.settings))
    objectives = list(dict.fromkeys(g.settings["objective"] for g in points))
    markers = "osD^vP*Xh<>p"  # one marker per objective, one colour per experiment

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    data: dict[str, list[tuple[float, ...]]] = {}
    for i, g in enumerate(points):
        (x, xerr), (y, yerr) = _mean_std(g.values("Natural")), _mean_std(g.values(robust))
        legend = differences.describe(g.settings)
        data[legend] = [(x, xerr, y, yerr)]
        marker = markers[objectives.index(g.settings["objective"]) % len(markers)]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, capsize=3, color=_style(i)["color"], label=legend)
    ax.set_xlabel("natural accuracy (%)")
    ax.set_ylabel(f"{robust} accuracy (%)")
    ax.set_title(f"natural vs {robust}, {checkpoint} checkpoint; mean ± std over seeds", fontsize="medium")
    ax.grid(alpha=0.3)
    figure = _save(fig, [ax], out, name)
    figure.data = {f"Natural vs {robust}": data}
    return figure


def _training_curves(runs: Sequence[RunRecord], out: Path) -> Figure:
    name = "training_curves"
    experiments: dict[str, tuple[dict[str, Any], list[list[dict[str, Any]]]]] = {}
    for run in runs:
        rows = read_metrics(run.path)
        if rows:
            shown = {k: v for k, v in run.experiment.items() if k not in RUN_EVALUATION}
            experiments.setdefault(run.experiment_id, (shown, []))[1].append(rows)
    if not experiments:
        return Figure(name, skipped="no run has metrics.jsonl")
    full = {r.experiment_id: r.experiment for r in runs}
    distinguish([(i, shown, full[i]) for i, (shown, _) in experiments.items()])
    differences = Differences.of([shown for shown, _ in experiments.values()])
    experiments = dict(sorted(experiments.items(), key=lambda item: _order(differences, item[1][0])))
    keys = [(k, label) for k, label in CURVES
            if any(row.get(k) is not None for _, seeds in experiments.values() for rows in seeds for row in rows)]

    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 0.6, 4.4), squeeze=False,
                             layout="constrained")
    data: dict[str, dict[str, list[tuple[float, ...]]]] = {}
    for ax, (key, label) in zip(axes[0], keys):
        for i, (shown, seeds) in enumerate(experiments.values()):
            per_epoch: dict[int, list[float]] = {}
            for rows in seeds:
                for row in rows:
                    if _numeric(row.get(key)) and _numeric(row.get("epoch")):
                        per_epoch.setdefault(int(row["epoch"]) + 1, []).append(float(row[key]))
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            stats = [_mean_std(per_epoch[e]) for e in epochs]
            style = _style(i)
            legend = differences.describe(shown)
            data.setdefault(key, {})[legend] = [(e, m, s) for e, (m, s) in zip(epochs, stats)]
            ax.plot(epochs, [m for m, _ in stats], marker="o", markersize=3, label=legend, **style)
            ax.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats], color=style["color"],
                            alpha=0.18, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("training curves; mean ± std over seeds", fontsize="medium")
    figure = _save(fig, axes[0], out, name)
    figure.data = data
    return figure
