"""The adversarial-training zoo: every spec of specs/ that is not on digits runs a 2-epoch digits smoke run
(through overrides), and what makes each objective itself shows in its record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ["--set", "train.data=digits", "--set", "train.model=small_cnn", "--set", "train.epochs=2",
          "--set", "train.batch=128", "--set", "train.augment=false", "--set", "train.val=100",
          "--set", "threat.eps=0.1", "--set", "evaluate=natural pgd(steps = 3)", "--eval-n", "20", "--quiet"]
ZOO = {
    "free_at": [],
    "fast_at": ["--set", "train.precision=fp32"],
    "awp": [],
    "trades_awp": [],
    "curriculum": ["--set", "attack.steps=piecewise(0: 1, 1: 2)"],  # K grows within the smoke run
    "dynamic_at": [],
    "mail": ["--set", "weight.from_epoch=1"],  # the weights start within the smoke run
}


def run(name: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "advc", "run", str(ROOT / "specs" / f"{name}.adv"), *DIGITS, *ZOO[name],
            "--out", str(out)]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_spec_runs_two_epochs_on_digits(name, tmp_path):
    done = run(name, tmp_path / name)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    results = json.loads((tmp_path / name / "results.json").read_text())
    assert set(results["checkpoints"]["last"]) == {"Natural", "PGD-3"}
    records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    bps = [r["bps_per_sample"] for r in records]
    if name == "free_at":  # every minibatch replayed m = 8 times, one backward each
        assert bps == [8.0, 8.0]
    elif name == "fast_at":  # FGSM: one step per sample
        assert bps == [1.0, 1.0]
    elif name == "curriculum":  # K follows the epoch
        assert bps == [1.0, 2.0]
    elif name == "dynamic_at":  # FOSC stops samples early: at least the first step, at most K
        assert all(1.0 <= b <= 10.0 for b in bps)
    else:
        assert all(b == 10.0 for b in bps)
