"""Keeps the long fuzz script (``tests/fuzz/fuzz_frontend.py``) from rotting: a few hundred
of its cases in-process, plus its command line on a handful."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _load():
    spec = importlib.util.spec_from_file_location("advc_fuzz_frontend", HERE / "fuzz_frontend.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz_frontend = _load()


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
