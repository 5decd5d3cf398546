"""`advc compile --standalone`: one file that trains where advc is not installed, bit for bit like `advc run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
CHEAP = ["--set", "evaluate=natural pgd(steps = 20)", "--eval-n", "40"]


def run(args, cwd, env=None) -> subprocess.CompletedProcess:
    full = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=600, check=False)


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_standalone_quickstart_runs_without_advc_and_equals_advc_run(tmp_path):
    program = tmp_path / "quickstart_standalone.py"
    done = run([sys.executable, "-m", "advc", "compile", str(QUICKSTART), "--standalone", "-o", str(program)], ROOT)
    assert done.returncode == 0, done.stderr
    text = program.read_text()
    assert "import advc" not in text and "from advc" not in text

    # a Python in which `import advc` fails: a shadowing package first on the path
    fake = tmp_path / "no_advc" / "advc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('advc is not installed here')\n")
    env = {"PYTHONPATH": str(fake.parent)}
    probe = run([sys.executable, "-c", "import advc"], tmp_path, env)
    assert probe.returncode != 0 and "advc is not installed here" in probe.stderr

    alone = run([sys.executable, str(program), "--out", str(tmp_path / "alone"), "--epochs", "1", "--eval-n", "40"],
                tmp_path, env)
    assert alone.returncode == 0, alone.stderr
    ours = run([sys.executable, "-m", "advc", "run", str(QUICKSTART), "--set", "train.epochs=1", *CHEAP,
                "--out", str(tmp_path / "advc"), "--quiet"], ROOT)
    assert ours.returncode == 0, ours.stderr

    # the same weights, bit for bit, and the same per-epoch record
    a, b = model_tensors(tmp_path / "alone"), model_tensors(tmp_path / "advc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()[0])
    rb = json.loads((tmp_path / "advc" / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss", "kappa_mean", "kappa_hist", "bps", "passes", "val_natural", "val_pgd20",
                "train_natural", "train_adversarial"):
        assert ra[key] == rb[key], key
    # and it prints the final natural and PGD-20 accuracy, the numbers advc run's table holds
    results = json.loads((tmp_path / "advc" / "results.json").read_text())["checkpoints"]["last"]
    line = next(x for x in alone.stdout.splitlines() if x.startswith("test last:"))
    assert line == f"test last: Natural {results['Natural']:.2f}%  PGD-20 {results['PGD-20']:.2f}%"
