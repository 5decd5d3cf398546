"""The ``advc`` command line: check, fmt, compile, run, eval, table.

Heavy imports (torch, accelerate) happen inside the commands that need them, so
``advc check`` and ``advc fmt`` answer in a fraction of a second. Every error a user can
cause is printed as a diagnostic or one line and exits non-zero; never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from advc.errors import AdvcError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="advc: compile adversarial-training objectives to PyTorch and run them.",
)

SET_HELP = "Override a spec value, e.g. --set attack.steps=20 (repeatable)."


def _fail(err: AdvcError) -> None:
    typer.echo(err.render(), err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def check(specs: list[Path] = typer.Argument(..., help="Spec files to check."),
          set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Parse and check specs; print every problem with its location."""
    from advc.compiler.check import check_file
    from advc.compiler.diagnostics import SpecError

    failed = False
    for spec in specs:
        try:
            program = check_file(spec, set_ or None)
        except SpecError as err:
            typer.echo(err.render(), err=True)
            failed = True
            continue
        typer.echo(f"{spec}: ok (objective {program.name})")
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
            tmp = path.with_name(path.name + ".advc-tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            typer.echo(f"{path}: reformatted")
    if failed:
        raise typer.Exit(2)
    if check_only and unformatted:
        raise typer.Exit(1)


@app.command("compile")
def compile_(spec: Path = typer.Argument(..., help="Spec file."),
             output: Path | None = typer.Option(None, "-o", "--output", help="Write the module here (default: stdout)."),
             set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP)) -> None:
    """Compile a spec to a readable PyTorch module (the same code `advc run` executes)."""
    from advc.api import compile_spec
    from advc.compiler.diagnostics import SpecError

    try:
        program, source = compile_spec(spec, set_ or None)
    except SpecError as err:
        _fail(err)
    if output is None:
        typer.echo(source, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".advc-tmp")
    tmp.write_text(source, encoding="utf-8")
    tmp.replace(output)
    typer.echo(f"{spec}: wrote {output} (objective {program.name})", err=True)


# --- advc run / eval / table live below (runtime) ----------------------------------------


@app.command()
def run(spec: Path = typer.Argument(..., help="Spec file to train."),
        set_: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
        out: Path | None = typer.Option(None, "--out", help="Run folder (default: runs/<spec name>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
        gpus: int = typer.Option(0, "--gpus", help="Train with N GPU processes (Accelerate's launcher)."),
        cpu_procs: int = typer.Option(0, "--cpu-procs", help="Train with N CPU processes over gloo."),
        data_root: str | None = typer.Option(None, "--data-root", help="Folder holding the data sets."),
        download: bool = typer.Option(False, "--download", help="Let torchvision download missing data."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
        no_eval: bool = typer.Option(False, "--no-eval", help="Skip the final test-set evaluation."),
        eval_n: int | None = typer.Option(None, "--eval-n", help="Evaluate on the first N test samples."),
        eval_batch: int = typer.Option(256, "--eval-batch", help="Batch size of the evaluation attacks.")) -> None:
    """Train a spec with Accelerate, keep best/last checkpoints, and evaluate them on the test set."""
    from advc.runtime.train import RunOptions
    from advc.runtime.train import run as run_training

    opts = RunOptions(spec=spec, overrides=list(set_ or []), out=out, resume=resume, gpus=gpus,
                      cpu_procs=cpu_procs, data_root=data_root, download=download, quiet=quiet,
                      evaluate=not no_eval, eval_n=eval_n, eval_batch=eval_batch)
    try:
        code = run_training(opts)
    except AdvcError as err:
        _fail(err)
    if code:
        raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except AdvcError as err:  # raised outside a command's own handling
        typer.echo(err.render(), err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
