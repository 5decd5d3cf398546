"""What a run leaves behind besides checkpoints: per-epoch metrics (JSONL + CSV) and plots.

``metrics.jsonl`` is the record of truth (one JSON object per epoch, appended as each epoch
ends); ``metrics.csv`` is rewritten from it so a spreadsheet opens the same numbers. Plots are
drawn with matplotlib's Agg backend (no display needed): validation accuracy per epoch, the
kappa histogram of the last epoch and the backward passes (BPs) per epoch.

Nothing here imports torch: reading and plotting a run folder works anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advc.files import atomic_write_text  # re-exported: the run folder's writer

__all__ = [
    "METRICS_CSV",
    "METRICS_JSONL",
    "append_metrics",
    "atomic_write_text",
    "read_metrics",
    "truncate_metrics",
    "write_metrics_csv",
    "write_plots",
]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder (an empty list when there are none)."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    rows = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: the epoch is redone anyway
                continue
    return rows


def truncate_metrics(run_dir: str | os.PathLike, before_epoch: int) -> list[dict[str, Any]]:
    """Keep only epochs < ``before_epoch`` (a resumed run redoes the rest); returns them."""
    rows = [r for r in read_metrics(run_dir) if int(r.get("epoch", -1)) < before_epoch]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(Path(run_dir) / METRICS_JSONL, text)
    write_metrics_csv(run_dir, rows)
    return rows


def append_metrics(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one epoch to ``metrics.jsonl`` and rewrite ``metrics.csv``."""
    path = Path(run_dir) / METRICS_JSONL
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    write_metrics_csv(run_dir, read_metrics(run_dir))


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
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return []
    folder = Path(run_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) + 1 for r in rows]  # 1-based on the axis, as papers plot
    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        tmp = folder / f".{name}.tmp.png"
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("val_natural", "natural (val)"), ("val_pgd20", "PGD-20 (val)")):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(epochs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("validation accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save(fig, "accuracy.png")

    hist = rows[-1].get("kappa_hist") or []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(range(len(hist)), hist, color="tab:purple")
    ax.set_xlabel("kappa (checks still classified correctly)")
    ax.set_ylabel("training samples")
    ax.set_title(f"kappa histogram, epoch {epochs[-1]}")
    save(fig, "kappa.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(epochs, [r.get("bps", 0) for r in rows], color="tab:orange")
    ax.set_xlabel("epoch")
    ax.set_ylabel("backward passes (sum of attack steps)")
    ax.set_title("BPs per epoch")
    save(fig, "bps.png")
    return written
