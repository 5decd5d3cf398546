"""`advc eval` and `advc table` through the real command line, on a 1-epoch quickstart run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advc.runtime.results import load_evaluations

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
CHEAP = "natural fgsm pgd(steps = 5)"


def advc(*args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny models: more threads only spin
    return subprocess.run([sys.executable, "-m", "advc", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "qs"
    done = advc("run", QUICKSTART, "--set", "train.epochs=1", "--no-eval", "--quiet", "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def test_eval_of_a_run_folder_prints_the_table_and_sanity_checks(run_dir):
    done = advc("eval", run_dir, "--attacks", CHEAP, "--n", "64")
    assert done.returncode == 0, done.stderr
    assert "| Checkpoint | Natural | FGSM | PGD-5 |" in done.stdout
    assert "| best |" in done.stdout and "| last |" in done.stdout
    assert "sanity checks (best):" in done.stdout
    assert "`eps0-equals-natural`" in done.stdout and "Traceback" not in done.stderr


def test_eval_keeps_what_it_measured_and_never_changes_the_training_record(run_dir, tmp_path):
    before = sorted(p.name for p in (run_dir / "evaluations").glob("*.json")) if (run_dir / "evaluations").is_dir() else []
    done = advc("eval", run_dir, "--no-sanity", "--attacks", "natural pgd(steps = 3)", "--n", "50")
    assert done.returncode == 0, done.stderr
    assert not (run_dir / "results.json").exists()  # the run was trained with --no-eval: no training record
    kept = [json.loads(p.read_text()) for p in sorted((run_dir / "evaluations").glob("*.json"))
            if p.name not in before]
    assert sorted(k["checkpoint"] for k in kept) == ["best", "last"]
    for record in kept:
        assert record["attacks"] == "natural pgd(steps = 3)" and record["n"] == 50 and record["eps"] == 0.1
        assert set(record["results"]) == {"Natural", "PGD-3"} and "sanity" not in record
        assert len(record["weights_sha256"]) == 64
    # the same evaluation again is kept beside the first, never over it
    done = advc("eval", run_dir, "--no-sanity", "--attacks", "natural pgd(steps = 3)", "--n", "50")
    assert done.returncode == 0, done.stderr
    assert len(list((run_dir / "evaluations").glob("*.json"))) == len(before) + 4


def test_eval_of_one_checkpoint_needs_its_spec(run_dir):
    ckpt = run_dir / "checkpoints" / "last.safetensors"
    done = advc("eval", ckpt, "--attacks", "natural")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "--spec" in done.stderr
    done = advc("eval", ckpt, "--spec", QUICKSTART, "--attacks", "natural", "--no-sanity")
    assert done.returncode == 0, done.stderr
    assert "| last |" in done.stdout


def test_a_bad_attack_list_gets_a_located_diagnostic(run_dir):
    done = advc("eval", run_dir, "--attacks", "natural pgdd(steps = 3)")
    assert done.returncode == 2
    assert "--attacks:1:9: error: unknown evaluation attack 'pgdd'" in done.stderr
    assert "did you mean 'pgd'?" in done.stderr and "Traceback" not in done.stderr


def test_eval_of_a_folder_that_is_not_a_run(tmp_path):
    done = advc("eval", tmp_path, "--attacks", "natural")
    assert done.returncode == 1 and "not an advc run folder" in done.stderr and "Traceback" not in done.stderr


def _cut_spec(tmp_path: Path) -> Path:
    """The quickstart with a cheap evaluation list (its own, so eval writes results.json)."""
    spec = tmp_path / "cut.adv"
    text = QUICKSTART.read_text()
    start, end = text.index("evaluate {"), text.rindex("}") + 1
    spec.write_text(text[:start] + "evaluate {\n    natural\n    pgd(steps = 3)\n}" + text[end:])
    return spec


def test_table_shows_the_newest_kept_evaluation_and_refuses_a_folder_without_run_json(run_dir, tmp_path):
    done = advc("eval", run_dir, "--spec", _cut_spec(tmp_path), "--no-sanity")
    assert done.returncode == 0, done.stderr
    newest = {e["checkpoint"]: e for e in load_evaluations(run_dir)}  # (oldest first: the last one wins)
    assert newest["best"]["attacks"] == "natural pgd(steps = 3)"
    done = advc("table", run_dir)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("| quickstart |")]
    assert lines == [f"| quickstart | {c} | 1 seed | {newest[c]['results']['Natural']:.2f} | "
                     f"{newest[c]['results']['PGD-3']:.2f} |" for c in ("best", "last")]
    # trained with --no-eval: no evaluation of its own list, and the table says which one it shows
    assert (f"- {run_dir} (best): no kept evaluation of its own evaluate list (Natural FGSM PGD-20 CW∞ PGD-100 AA); "
            "shown: its newest, natural pgd(steps = 3)") in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    done = advc("table", run_dir, empty)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: not an advc run folder: no run.json ({empty}) -- hint: ")
    assert done.stderr.count("\n") == 1
