"""``TrackedRun``: the run folder of a training program started through advc.

``loop.RunFolder`` writes checkpoints and metrics; this subclass adds what needs the rest of advc:
the folder lock (one writer per run folder), a progress bar with elapsed time and ETA, the CSV
copy of the metrics, plots and TensorBoard, and the final evaluation with the spec's whole
evaluate list (AutoAttack included), its sanity checks and the results tables
(``results.json``, ``results.md`` and the kept evaluation in ``evaluations/``).
"""

from __future__ import annotations

import importlib.util
import sys
import time

import torch

from advc.runtime.loop import CHECKPOINTS, RunFolder, shard


def run_loggers() -> str | None:
    """Accelerate's tracker for the run: TensorBoard when it is installed."""
    found = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    return "tensorboard" if found else None


#: the run's plots are redrawn at most this often while it trains, and once more when training
#: ends (before the evaluation, or at ``close``): on a quick run, drawing three figures every epoch would cost more than the epochs
PLOT_EVERY_S = 30.0


class TrackedRun(RunFolder):
    def __init__(self, args, accelerator, **kw):
        super().__init__(args, accelerator, **kw)
        self.bar = None
        self.task = None
        self.lock = None
        self.timed: list[float] = []  # seconds of the epochs this process trained
        self.plotted = time.monotonic()  # when the plots were last drawn
        self.plotted_epochs = 0  # how many epochs of the history they show

    # start ------------------------------------------------------------------------------
    def start(self) -> None:
        from advc.runtime.folders import claim_run_folder

        if self.main:
            self.lock = claim_run_folder(self.dir, resume=self.args.resume)
        super().start()
        if self.accelerator.log_with:
            config = {"spec": self.spec, "epochs": self.epochs}
            self.accelerator.init_trackers("tensorboard", config=config)

    # per epoch --------------------------------------------------------------------------
    def progress(self, loader, epoch: int):
        """The batches of an epoch, with a progress bar (elapsed, ETA) on a terminal."""
        self.epoch_t0 = time.perf_counter()
        if not self.main or self.args.quiet or not sys.stdout.isatty():
            yield from loader
            return
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("training", total=len(loader) * self.epochs)
            self.bar.update(self.task, completed=len(loader) * epoch)
        self.bar.update(self.task, description=f"epoch {epoch}/{self.epochs - 1}")
        for batch in loader:
            yield batch
            self.bar.update(self.task, advance=1)

    def log(self, record: dict, improved: bool) -> None:
        super().log(record, improved)
        if self.main:
            from advc.runtime.report import write_metrics_csv

            write_metrics_csv(self.dir, self.history)
            if time.monotonic() - self.plotted >= PLOT_EVERY_S:
                self._plot()
        if self.accelerator.log_with:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(numbers, step=record["epoch"])
            if self.main and record.get("kappa_hist"):
                import numpy as np

                writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
                counts = record["kappa_hist"]
                writer.add_histogram("kappa", np.repeat(np.arange(len(counts)), counts), record["epoch"])
        left = self.epochs - 1 - record["epoch"]
        if len(self.timed) == 0 and left > 0:  # the first epoch this run trained: an estimate to plan by
            seconds = record["seconds"] * left
            self.line(f"about {record['seconds']:.1f} s per epoch: the {left} epochs left take about "
                      f"{_duration(seconds)}, then the evaluation")
        self.timed.append(record["seconds"])

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            super().line(text)

    # the end ----------------------------------------------------------------------------
    def evaluate(self, model, x, y, evaluate: str, *, eps: float, norm: str) -> dict | None:
        """The spec's evaluation list on the best and last checkpoints (test split): the table is
        printed and written (results.json, results.md, and one kept evaluation per checkpoint);
        with AutoAttack in the list, the gradient-masking sanity checks run too."""
        from advc.compiler.check import check_attacks
        from advc.runtime.checkpoint import checkpoint_digest, load_checkpoint
        from advc.runtime.results import Row, results_markdown, write_evaluation, write_results
        from advc.runtime.sanity import sanity_checks

        self._stop_bar()
        self._plot_pending()  # training is over: the curves before the (long) evaluation
        if self.args.no_eval:
            return None
        attacks = check_attacks(evaluate, "EVALUATE")
        with_sanity = any(a.name == "autoattack" for a in attacks)
        if self.args.eval_n is not None:
            x, y = x[: self.args.eval_n], y[: self.args.eval_n]
        n = int(x.shape[0])
        table: dict[str, dict[str, float]] = {}
        checks: dict[str, list] = {}
        evaluated: dict[str, str] = {}  # weights digest -> checkpoint already evaluated (best is often last)
        for name in ("best", "last"):
            path = self.dir / CHECKPOINTS / f"{name}.safetensors"
            if not path.is_file():
                continue
            state, _, extra = load_checkpoint(path, map_location=self.accelerator.device)
            epoch, digest = int(extra["epoch"]), checkpoint_digest(path)
            t0 = time.perf_counter()
            if digest in evaluated:
                table[name], checks[name] = dict(table[evaluated[digest]]), checks.get(evaluated[digest], [])
                self.line(f"test {name}: same weights as {evaluated[digest]} (epoch {epoch})")
            else:
                model.load_state_dict(state)

                def report(label, acc, seconds, name=name, epoch=epoch):
                    self.line(f"test {name} (epoch {epoch}): {label} {acc:.2f}%  ({seconds:.1f}s)")

                table[name] = evaluate_sharded(self.accelerator, model, x, y, attacks, eps=eps, norm=norm,
                                               batch_size=self.args.eval_batch, report=report)
                if with_sanity and self.main:
                    checks[name] = sanity_checks(model, x, y, table[name], eps=eps, norm=norm,
                                                 batch_size=self.args.eval_batch)
            if self.main:
                write_evaluation(self.dir, checkpoint=name, weights_sha256=digest, epoch=epoch, attacks=evaluate, n=n,
                                 eps=eps, norm=norm, results=table[name], sanity=checks.get(name),
                                 seconds=time.perf_counter() - t0, by="advc run")
            evaluated[digest] = name
        if self.main:
            write_results(self.dir, self.spec, self.seed, table, n=n, sanity=checks)
            print(f"\n{self.spec}: test accuracy (%) on {n} samples, eps {eps:.4g} ({norm}); run folder {self.dir}\n",
                  flush=True)
            print(results_markdown([Row(k, cols) for k, cols in table.items()], first_column="Checkpoint"), flush=True)
        self.accelerator.wait_for_everyone()
        return table

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _plot(self) -> None:
        from advc.runtime.report import write_plots

        write_plots(self.dir, self.history)
        self.plotted, self.plotted_epochs = time.monotonic(), len(self.history)

    def _plot_pending(self) -> None:
        if self.main and len(self.history) > self.plotted_epochs:  # the epochs since the last drawing
            self._plot()

    def close(self) -> None:
        self._stop_bar()
        self._plot_pending()
        if self.accelerator.log_with:
            self.accelerator.end_training()  # last: it tears the process group down
        else:
            super().close()
        if self.lock is not None:
            self.lock.release()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def evaluate_sharded(accelerator, model, x, y, attacks, *, eps, norm, batch_size, report=None) -> dict[str, float]:
    """{label: accuracy %} over all of x, each process attacking its shard, attack by attack
    (``report(label, accuracy, seconds)`` after each one, for progress lines)."""
    from advc.runtime.evaluate import evaluate_model, parse_attack_list

    n = int(x.shape[0])
    start, size = shard(n, accelerator.num_processes, accelerator.process_index)
    xs, ys = x[start : start + size], y[start : start + size]
    out: dict[str, float] = {}
    for cfg in parse_attack_list(attacks):
        t0 = time.perf_counter()
        local = evaluate_model(model, xs, ys, [cfg], eps=eps, norm=norm, batch_size=batch_size)[cfg.label] if size else 0.0
        count = torch.tensor([round(local * size / 100.0)], dtype=torch.float64, device=accelerator.device)
        count = accelerator.reduce(count, reduction="sum")
        out[cfg.label] = 100.0 * float(count[0]) / n if n else 0.0
        if report is not None:
            report(cfg.label, out[cfg.label], time.perf_counter() - t0)
    return out

