"""Keeps the long fuzz scripts from rotting: a few hundred cases of ``tests/fuzz/fuzz_frontend.py``
in-process plus its command line on a handful, and ~150 cases of ``tests/fuzz/fuzz_runfolder.py``
on one trained run folder."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"advc_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz_frontend = _load("fuzz_frontend")
fuzz_runfolder = _load("fuzz_runfolder")


def test_two_hundred_fuzz_cases_give_only_spec_errors():
    stats = fuzz_frontend.fuzz(200, seed=12345, case_timeout=10.0)
    assert stats.cases == 200
    assert stats.failures == [], stats.failures[:3]
    assert stats.tracebacks == stats.unsafe_modules == stats.bad_locations == stats.hangs == 0
    assert stats.spec_errors > 0 and stats.generated > 0  # both outcomes are exercised
    assert set(stats.by_strategy) == set(fuzz_frontend.STRATEGIES)


@pytest.mark.parametrize("strategy", fuzz_frontend.STRATEGIES)
def test_every_mutation_strategy_produces_bytes(strategy):
    import random

    source = (HERE.parents[1] / "specs" / "madry.adv").read_bytes()
    out = fuzz_frontend._mutate(random.Random(0), source, strategy)
    assert isinstance(out, bytes)


def test_the_script_runs_from_the_command_line(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_frontend.py"),
            "--cases",
            "30",
            "--no-big",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cases 30" in proc.stdout and "tracebacks 0" in proc.stdout
    assert report.is_file()



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The run folder the run-folder fuzzer mutates (quickstart, one epoch; about 10 s)."""
    return fuzz_runfolder.train_base(tmp_path_factory.mktemp("trained") / "run")


@pytest.mark.slow
def test_a_hundred_and_fifty_run_folder_mutations_never_run_code_crash_or_change_a_number(trained, tmp_path):
    stats = fuzz_runfolder.fuzz(150, seed=12, work=tmp_path, base=trained, subprocess_every=75, resume_every=5)
    assert stats.cases == 150 and set(stats.by_strategy) == set(fuzz_runfolder.STRATEGIES)
    assert stats.failures == [], stats.failures[:3]
    assert stats.tracebacks == stats.canary_runs == stats.changed_numbers == stats.changed_folders == 0
    assert stats.multi_line_errors == stats.silent_refusals == stats.hangs == 0
    assert stats.accepted > 0 and stats.refused > 0 and stats.resume_accepted > 0 and stats.resume_refused > 0
    assert stats.subprocesses == 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", fuzz_runfolder.STRATEGIES)
def test_every_run_folder_mutation_changes_the_folder(trained, tmp_path, strategy):
    import random

    from advc.runtime.checkpoint import _digest  # noqa: F401 - resign needs it importable

    ctx = fuzz_runfolder.Context(tmp_path / "CANARY-RAN", fuzz_runfolder.QUICKSTART)
    for seed in range(3):
        folder = tmp_path / f"run{seed}"
        shutil.copytree(trained, folder, symlinks=True)
        before = fuzz_runfolder.snapshot(folder)
        what, _ = fuzz_runfolder.mutate(random.Random(seed), folder, strategy, ctx)
        assert fuzz_runfolder.snapshot(folder) != before, what
