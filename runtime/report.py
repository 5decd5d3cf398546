"""What a run leaves behind besides checkpoints: the CSV copy of its metrics, and its plots.

``metrics.jsonl`` is the record of truth (``advc.runtime.loop``: one JSON object per epoch,
appended as each epoch ends); ``metrics.csv`` is rewritten from it so a spreadsheet opens the
same numbers. Plots are drawn with matplotlib's Agg backend (no display needed): accuracy per
epoch (validation, and training on natural and adversarial data), kappa's histogram at every
epoch, and the backward passes (BPs) per sample per epoch. Epochs are numbered from 0, as in specs.

Nothing here imports torch: reading and plotting a run folder works anywhere.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advc.files import atomic_write_text  # re-exported: the run folder's writer

__all__ = ["METRICS_CSV", "write_metrics_csv", "write_plots"]

METRICS_CSV = "metrics.csv"


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """CSV cells: lists (the kappa histogram) become one space-separated cell."""
    return {
        k: " ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v
        for k, v in record.items()
    }


def write_metrics_csv(run_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_flat(row))
    atomic_write_text(Path(run_dir) / METRICS_CSV, buf.getvalue())


def write_plots(run_dir: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """accuracy.png, kappa.png, bps.png in ``run_dir/plots``; returns the files written.

    Skipped (empty list) when matplotlib is missing or there are no epochs yet.
    """
    if not rows:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return []
    folder = Path(run_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) for r in rows]  # from 0, as the spec counts them
    written = []
    for name, draw in (("accuracy.png", _accuracy), ("kappa.png", _kappa), ("bps.png", _bps)):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        draw(fig, ax, rows, epochs)
        ax.set_xlabel("epoch (from 0)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        tmp = folder / f".{name}.tmp.png"  # never a half-written figure under the real name
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, folder / name)
        written.append(folder / name)
    return written


def _accuracy(fig, ax, rows: Sequence[Mapping[str, Any]], epochs: list[int]) -> None:
    for key, label in (("val_natural", "natural (val)"), ("val_pgd20", "PGD-20 (val)"),
                       ("train_natural", "natural (train)"), ("train_adversarial", "adversarial (train)")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            style = "-" if key.startswith("val") else ":"
            ax.plot(epochs, [float("nan") if y is None else y for y in ys], style, marker="o", label=label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy per epoch")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _kappa(fig, ax, rows: Sequence[Mapping[str, Any]], epochs: list[int]) -> None:
    """kappa at every epoch: one column per epoch, the share of samples at each value."""
    hists = [r.get("kappa_hist") or [] for r in rows]
    k = max((len(h) for h in hists), default=1)
    grid = [[(h[i] / max(sum(h), 1)) if i < len(h) else 0.0 for h in hists] for i in range(k)]
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, k - 0.5))
    fig.colorbar(image, ax=ax, label="share of training samples")
    ax.set_ylabel("kappa (checks still correct)")
    ax.set_title("kappa histogram per epoch")


def _bps(fig, ax, rows: Sequence[Mapping[str, Any]], epochs: list[int]) -> None:
    ax.bar(epochs, [r.get("bps_per_sample", 0) for r in rows], color="tab:orange")
    ax.set_ylabel("backward passes per sample")
    ax.set_title("BPs per sample per epoch")
