"""Runs as experiments: extending a finished run, starting from another run's weights, shareable models,
files a shared group can read, one epoch numbering everywhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
CHEAP = ["--set", "evaluate=natural pgd(steps = 3)", "--eval-n", "30", "--quiet"]


def advc(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "advc", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "qs"
    done = advc("run", QUICKSTART, "--set", "train.epochs=1", *CHEAP, "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def test_resume_with_more_epochs_continues_the_run_and_records_it(one_epoch, tmp_path):
    import shutil

    out = tmp_path / "longer"
    shutil.copytree(one_epoch, out)
    done = advc("run", QUICKSTART, "--set", "train.epochs=2", *CHEAP, "--out", out, "--resume")
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]  # epoch 0 kept, epoch 1 trained
    record = json.loads((out / "run.json").read_text())
    assert [h["epochs"] for h in record["history"]] == [1, 2] and record["experiment"]["train.epochs"] == 2
    # the same as training 2 epochs at once
    fresh = tmp_path / "fresh"
    assert advc("run", QUICKSTART, "--set", "train.epochs=2", *CHEAP, "--out", fresh).returncode == 0
    a = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    b = json.loads((fresh / "metrics.jsonl").read_text().splitlines()[1])
    # (the cosine learning rate does not depend on epochs, so the second epoch is the same)
    assert (a["loss"], a["val_pgd20"], a["kappa_hist"]) == (b["loss"], b["val_pgd20"], b["kappa_hist"])


def test_init_from_starts_a_new_run_from_another_runs_weights(one_epoch, tmp_path):
    out = tmp_path / "finetune"
    last = one_epoch / "checkpoints" / "last.safetensors"
    done = advc("run", QUICKSTART, "--set", "train.epochs=1", *CHEAP, "--out", out, "--init-from", last)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "run.json").read_text())["init_from"] == str(last)
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    start = json.loads((one_epoch / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_natural"] > start["train_natural"]  # it starts trained, not from scratch
    bad = advc("run", QUICKSTART, "--out", tmp_path / "nope", "--init-from", tmp_path / "missing.safetensors")
    assert bad.returncode == 1 and bad.stderr.startswith("error: no such checkpoint")


def test_load_model_and_robustbench_export_give_the_same_logits(one_epoch, tmp_path):
    from safetensors.torch import load_file

    from advc import load_model
    from advc.runtime.models import small_cnn

    model = load_model(one_epoch)
    assert not model.training and model.advc["eps"] == 0.1 and model.advc["threat"] == "linf"
    refused = advc("export", one_epoch, "-o", tmp_path / "rb")
    assert refused.returncode == 1 and "no kept evaluation" in refused.stderr and "natural autoattack" in refused.stderr
    done = advc("eval", one_epoch, "--attacks", "natural autoattack(queries = 50)", "--n", "20", "--no-sanity")
    assert done.returncode == 0, done.stderr
    done = advc("export", one_epoch, "-o", tmp_path / "rb")
    assert done.returncode == 0, done.stderr
    card = json.loads((tmp_path / "rb" / "model_card.json").read_text())
    assert card["threat_model"] == "Linf" and card["eps"] == 0.1 and card["n_test_points"] == 20
    assert 0 <= card["autoattack_acc"] <= card["clean_acc"] <= 100
    fresh = small_cnn(**card["architecture"]["kwargs"]).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "rb" / "model.safetensors")))
    again = small_cnn(**card["architecture"]["kwargs"]).eval()
    again.load_state_dict(torch.load(tmp_path / "rb" / "state_dict.pt", weights_only=True))
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x)) and torch.equal(again(x), model(x))


def test_run_files_honour_the_umask_and_epochs_count_from_zero(tmp_path):
    out = tmp_path / "shared"
    old = os.umask(0o002)  # a group that shares run folders
    try:
        done = advc("run", QUICKSTART, "--set", "train.epochs=2", *CHEAP[:-1], "--out", out)
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    for name in ("run.json", "resolved.json", "objective.py", "metrics.jsonl", "metrics.csv", "results.json",
                 "results.md", "checkpoints/last.safetensors", "spec/quickstart.adv"):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode & 0o060 == 0o060, (name, oct(mode))
    # one numbering: the spec's, from 0 -- console, metrics and checkpoints
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["0/1", "1/1"]
    assert [json.loads(r)["epoch"] for r in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert json.loads((out / "checkpoints" / "last.json").read_text())["extra"]["epoch"] == 1
    assert "about " in done.stdout and "epochs left take about" in done.stdout  # the estimate to plan by
