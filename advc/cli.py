"""The ``advc`` command line: check, fmt, compile, run, eval, sweep, table, plot, export.

Heavy imports (torch, accelerate) happen inside the commands that need them, so
``advc check`` and ``advc fmt`` answer in a fraction of a second. Every error a user can
cause is printed as a diagnostic or one line and exits non-zero; never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from advc.errors import AdvcError, UserError
from advc.files import atomic_write_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="advc: compile adversarial-training objectives to PyTorch and run them.",
)

SET_HELP = "Override a spec value, e.g. --set attack.steps=20 (repeatable)."
PATH_HELP = "A folder searched for `extends NAME` specs (repeatable; also $ADVC_PATH)."
ALLOW_HELP = "Silence a warning by its name, e.g. --allow unreachable-schedule (repeatable)."


def _fail(err: AdvcError) -> None:
    # in a multi-process run every process hits the same error: the main one says it once
    if os.environ.get("RANK", "0") == "0":
        typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def check(specs: list[Path] = typer.Argument(..., help="Spec files to check."),
          set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
          spec_path: list[str] | None = typer.Option(None, "--spec-path", help=PATH_HELP),
          allow: list[str] | None = typer.Option(None, "--allow", help=ALLOW_HELP),
          strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors.")) -> None:
    """Parse and check specs; print every problem with its location, then the warnings."""
    from advc.compiler.check import check_file
    from advc.compiler.diagnostics import SpecError
    from advc.compiler.warn import CODES

    for code in allow or ():
        if code not in CODES:
            _fail(UserError(f"unknown warning '{code}'", where="--allow", hint=f"warnings: {', '.join(CODES)}"))
    failed = False
    for spec in specs:
        try:
            program = check_file(spec, set_ or None, spec_path=spec_path)
        except SpecError as err:
            typer.echo(err.render(), err=True)
            failed = True
            continue
        shown = [w for w in program.warnings if w.code not in (allow or ())]
        for w in shown:
            typer.echo(w.rendered, err=True)
        parents = ", ".join(f"{name}: {f}" + ("" if how in ("the spec's folder", "the same file") else f" ({how})")
                            for name, f, how in program.parents)
        parents = f", extends {parents}" if parents else ""
        if strict and shown:
            typer.echo(f"{spec}: {len(shown)} warning(s) with --strict", err=True)
            failed = True
            continue
        typer.echo(f"{spec}: ok (objective {program.name}{parents})")
    if failed:
        raise typer.Exit(2)


@app.command()
def fmt(specs: list[Path] = typer.Argument(..., help="Spec files to format in place."),
        check_only: bool = typer.Option(False, "--check", help="Only report files that are not formatted.")) -> None:
    """Rewrite specs in canonical form (comments kept); --check only reports."""
    from advc.compiler.diagnostics import SpecError
    from advc.compiler.fmt import format_spec
    from advc.compiler.parse import read_spec

    unformatted = failed = 0
    for path in specs:
        try:
            spec = read_spec(path)
        except SpecError as err:
            typer.echo(err.render(), err=True)
            failed += 1
            continue
        text = format_spec(spec)
        if text == spec.source:
            continue
        unformatted += 1
        if check_only:
            typer.echo(f"{path}: would reformat")
        else:
            atomic_write_text(path, text)
            typer.echo(f"{path}: reformatted")
    if failed:
        raise typer.Exit(2)
    if check_only and unformatted:
        raise typer.Exit(1)


@app.command("compile")
def compile_(spec: Path = typer.Argument(..., help="Spec file."),
             output: Path | None = typer.Option(None, "-o", "--output", help="Write the module here (default: stdout)."),
             set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
             standalone: bool = typer.Option(False, "--standalone",
                                             help="Inline advc's runtime: the file runs where advc is not installed."),
             spec_path: list[str] | None = typer.Option(None, "--spec-path", help=PATH_HELP)) -> None:
    """Compile a spec to its training program (the same code `advc run` executes)."""
    from advc.api import compile_spec
    from advc.compiler.diagnostics import SpecError

    if output is not None and output.is_dir():
        _fail(UserError("-o names a folder", where=str(output), hint="name the .py file to write"))
    try:
        program, source = compile_spec(spec, set_ or None, standalone=standalone,
                                       filename=output.name if output is not None else "objective.py",
                                       spec_path=spec_path)
    except SpecError as err:
        _fail(err)
    if output is None:
        typer.echo(source, nl=False)
        return
    try:
        atomic_write_text(output, source)
    except OSError as exc:
        _fail(UserError(f"cannot write the module: {exc.strerror or exc}", where=str(output)))
    typer.echo(f"{spec}: wrote {output} (objective {program.name}{', standalone' if standalone else ''})", err=True)


# --- advc run / eval / table live below (runtime) ----------------------------------------


@app.command()
def run(spec: Path = typer.Argument(..., help="Spec file to train."),
        set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
        out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<spec name>[-<overrides>])."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
        gpus: int = typer.Option(0, "--gpus", help="Train with N GPU processes (Accelerate's launcher)."),
        cpu_procs: int = typer.Option(0, "--cpu-procs", help="Train with N CPU processes over gloo."),
        data_root: str | None = typer.Option(None, "--data-root", help="Folder holding the data sets."),
        download: bool = typer.Option(False, "--download", help="Let torchvision download missing data."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
        no_eval: bool = typer.Option(False, "--no-eval", help="Skip the final test-set evaluation."),
        eval_n: int | None = typer.Option(None, "--eval-n", help="Evaluate on the first N test samples."),
        eval_batch: int = typer.Option(256, "--eval-batch", help="Batch size of the evaluation attacks."),
        eval_: str | None = typer.Option(None, "--eval", help="Attacks added to the evaluate list, e.g. 'pgd(steps = 50)'."),
        trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model named as package.module:callable."),
        init_from: Path | None = typer.Option(None, "--init-from", help="Start from another run's checkpoint."),
        spec_path: list[str] | None = typer.Option(None, "--spec-path", help=PATH_HELP),
        allow: list[str] | None = typer.Option(None, "--allow", help=ALLOW_HELP),
        strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors.")) -> None:
    """Train a spec with Accelerate, keep best/last checkpoints, and evaluate them on the test set."""
    from advc.runtime.run import RunOptions
    from advc.runtime.run import run as run_training

    opts = RunOptions(spec=spec, overrides=list(set_ or []), out=out, resume=resume, gpus=gpus,
                      cpu_procs=cpu_procs, data_root=data_root, download=download, quiet=quiet,
                      evaluate=not no_eval, eval_n=eval_n, eval_batch=eval_batch, trust_code=trust_code,
                      spec_path=list(spec_path or []), allow=list(allow or []), strict=strict, init_from=init_from,
                      eval_extra=eval_)
    try:
        code = run_training(opts)
    except AdvcError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo("error: interrupted -- hint: the last good checkpoint is kept; --resume continues the run", err=True)
        raise typer.Exit(130) from None
    except OSError as exc:  # disk full, permission: one line; the last good checkpoint stays
        _fail(UserError(f"{exc.strerror or exc}", where=getattr(exc, "filename", None) or "advc run",
                        hint="free disk space or fix permissions, then --resume"))
    if code:
        raise typer.Exit(code)


@app.command("eval")
def eval_(target: Path = typer.Argument(..., help="A run folder (runs/NAME) or one checkpoint file."),
          spec: Path | None = typer.Option(None, "--spec", help="The spec the model was trained with."),
          set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
          attacks: str | None = typer.Option(None, "--attacks",
                                             help="Attacks as in an evaluate block, e.g. 'natural pgd(steps = 20)'."),
          n: int | None = typer.Option(None, "--n", help="Evaluate on the first N test samples."),
          batch: int = typer.Option(256, "--batch", help="Batch size of the attacks."),
          data_root: str | None = typer.Option(None, "--data-root", help="Folder holding the data sets."),
          no_sanity: bool = typer.Option(False, "--no-sanity", help="Skip the gradient-masking checks."),
          trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model named as package.module:callable.")
          ) -> None:
    """Evaluate checkpoints; print the seed-style table and sanity checks, and keep them in the run folder."""
    from advc.runtime.eval_run import evaluate_target, resolve_target
    from advc.runtime.results import Row, results_markdown, sanity_markdown

    try:
        chosen = resolve_target(target, spec, set_ or None, trust_code=trust_code)
        table, checks, n_used = evaluate_target(chosen, attacks=attacks, n=n, batch_size=batch, data_root=data_root,
                                                sanity=not no_sanity, trust_code=trust_code)
    except AdvcError as err:
        _fail(err)
    except OSError as exc:  # keeping the evaluation in the run folder failed: disk full, a file in the way
        _fail(UserError(f"cannot keep the evaluation: {exc.strerror or exc}", where=exc.filename or str(target),
                        hint="free disk space or fix the run folder's evaluations/, then evaluate again"))
    typer.echo(f"\n{chosen.spec_name}: test accuracy (%) on {n_used} samples, eps {chosen.eps:.4g} ({chosen.norm})\n")
    typer.echo(results_markdown([Row(name, cols) for name, cols in table.items()], first_column="Checkpoint"))
    for name, found in checks.items():
        typer.echo(f"\nsanity checks ({name}):\n" + sanity_markdown(found))
    if chosen.run_dir is not None:
        typer.echo(f"\nkept in {chosen.run_dir / 'evaluations'}")


ATTACKS_PICK_HELP = ("Show the newest kept evaluation with these attacks, e.g. 'natural pgd(steps = 20)' "
                     "(default: each run's own evaluate list).")


@app.command()
def sweep(specs: list[Path] = typer.Argument(..., help="Spec files; every grid point runs for each."),
          grid: list[str] | None = typer.Option(
              None, "--grid", help="KEY=V1,V2,...: a --set key and its values (repeatable; the runs are the product)."),
          seeds: str | None = typer.Option(None, "--seeds", help="Training seeds, e.g. 0,1,2 (default: each spec's own)."),
          out: Path = typer.Option(..., "--out", help="The sweep folder: sweep.json and one run folder per point."),
          jobs: int | None = typer.Option(None, "--jobs", help="Runs at a time, each with its share of the cores (default 1)."),
          gpus: int = typer.Option(0, "--gpus", help="Run on N GPUs: one run per GPU at a time."),
          set_: list[str] | None = typer.Option(None, "--set", help="Override a spec value in every run (repeatable)."),
          eval_: str | None = typer.Option(None, "--eval", help="Attacks added to each run's evaluate list."),
          eval_n: int | None = typer.Option(None, "--eval-n", help="Evaluate on the first N test samples."),
          no_eval: bool = typer.Option(False, "--no-eval", help="Skip the evaluation (a run is complete at its last epoch)."),
          trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model named as package.module:callable."),
          data_root: str | None = typer.Option(None, "--data-root", help="Folder holding the data sets."),
          spec_path: list[str] | None = typer.Option(None, "--spec-path", help=PATH_HELP),
          allow: list[str] | None = typer.Option(None, "--allow", help=ALLOW_HELP),
          strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display; failures and the table only.")
          ) -> None:
    """Run a grid of experiments (specs x --grid values x --seeds), N at a time; rerun to finish what is missing."""
    import shlex

    from advc.runtime.sweep import SweepOptions
    from advc.runtime.sweep import sweep as run_sweep

    opts = SweepOptions(specs=list(specs), out=out, grid=list(grid or []), seeds=seeds, overrides=list(set_ or []),
                        jobs=jobs, gpus=gpus, eval_extra=eval_, eval_n=eval_n, no_eval=no_eval, trust_code=trust_code,
                        data_root=data_root, spec_path=list(spec_path or []), allow=list(allow or []), strict=strict,
                        quiet=quiet, command="advc " + shlex.join(sys.argv[1:]))
    try:
        code = run_sweep(opts)
    except AdvcError as err:
        _fail(err)
    except OSError as exc:
        _fail(UserError(f"{exc.strerror or exc}", where=getattr(exc, "filename", None) or "advc sweep",
                        hint="free disk space or fix permissions, then rerun the same command"))
    if code:
        raise typer.Exit(code)


@app.command()
def table(runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding run folders (a sweep)."),
          attacks: str | None = typer.Option(None, "--attacks", help=ATTACKS_PICK_HELP),
          checkpoint: str = typer.Option("both", "--checkpoint", help="best, last or both."),
          by: str | None = typer.Option(None, "--by", help="One column group per value of this setting, "
                                        "e.g. --by threat.eps."),
          format_: str = typer.Option("md", "--format", help="md, csv, json or latex."),
          cost: bool = typer.Option(False, "--cost", help="Add what training cost: backward passes per sample "
                                    "and wall seconds (from metrics.jsonl).")) -> None:
    """One table over runs: a row per experiment and checkpoint (mean ± std over seeds), differing settings as columns."""
    from advc.runtime.results import merge_runs

    try:
        typer.echo(merge_runs(runs, attacks=attacks, checkpoint=checkpoint, by=by, format=format_, cost=cost),
                   nl=False)
    except AdvcError as err:
        _fail(err)


@app.command()
def plot(runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding run folders (a sweep)."),
         out: Path = typer.Option(..., "--out", help="Folder the figures are written to (PNG and SVG)."),
         attacks: str | None = typer.Option(None, "--attacks", help=ATTACKS_PICK_HELP),
         checkpoint: str = typer.Option("best", "--checkpoint", help="best or last.")) -> None:
    """Figures across runs: accuracy vs eps, natural vs robust accuracy, training curves."""
    from advc.runtime.plots import plot_runs

    try:
        drawn = plot_runs(runs, out, attacks=attacks, checkpoint=checkpoint)
    except AdvcError as err:
        _fail(err)
    for figure in drawn.values():
        for line in figure.lines():
            typer.echo(line)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="A run folder."),
           format_: str = typer.Option("robustbench", "--format", help="What to write (robustbench)."),
           output: Path = typer.Option(..., "-o", "--output", help="A new or empty folder for the files."),
           checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
           trust_code: bool = typer.Option(False, "--trust-code", help="Allow a model named as package.module:callable.")
           ) -> None:
    """Write a trained model for others: weights, architecture, threat model and measured accuracies."""
    from advc.runtime.export import export_robustbench

    if format_ != "robustbench":
        _fail(UserError(f"unknown export format '{format_}'", where="--format", hint="robustbench"))
    try:
        files = export_robustbench(run_dir, output, checkpoint=checkpoint, trust_code=trust_code)
    except AdvcError as err:
        _fail(err)
    for path in files:
        typer.echo(f"wrote {path}")


def _click_exceptions(name: str) -> tuple[type, ...]:
    """click's exception class ``name``, from click and from the copy recent typer versions vendor."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def main() -> None:
    """Entry point: every error a user can cause ends as one line (or a diagnostic) and an exit code."""
    try:
        code = app(standalone_mode=False)
    except _click_exceptions("UsageError") as err:  # unknown option, missing argument, bad value
        ctx = getattr(err, "ctx", None)
        command = ctx.command_path if ctx is not None else "advc"
        message = err.format_message().strip()
        if message:  # (no message: bare `advc`, whose help was just printed)
            typer.echo(f"error: {message} -- hint: see '{command} --help'", err=True)
        sys.exit(2)
    except _click_exceptions("Abort"):
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except AdvcError as err:  # raised outside a command's own handling
        typer.echo(err.render(), err=True)
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
