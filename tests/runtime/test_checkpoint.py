"""Checkpoints: exact resume, damaged and edited files, atomic replacement, RNG state."""

from __future__ import annotations

import json
import math
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import advc.runtime.checkpoint as ckpt
from advc.errors import UserError
from advc.runtime.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

# ---------------------------------------------------------------------------------------------
# helpers


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
        nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip


def make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.95))


def train_steps(model, opt, n: int) -> None:
    """Steps that draw from every global RNG (batch, dropout, random, numpy)."""
    model.train()
    for _ in range(n):
        x = torch.rand(16, 1, 8, 8)
        y = torch.randint(0, 10, (16,))
        scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        loss = nn.functional.cross_entropy(model(x) * scale, y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def saved_file(tmp_path, name="last", epoch=1):
    model = make_model(0)
    opt = make_optimizer(model, "sgd")
    train_steps(model, opt, 1)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                    extra={"epoch": epoch})  # fmt: skip
    return path


def rewrite_metadata(path, edit) -> None:
    """Edit the safetensors header metadata in place, keeping a well-formed file."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


# ---------------------------------------------------------------------------------------------
# round trip and exact resume


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_continues_bit_identically(tmp_path, kind):
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    model = make_model(0)
    opt = make_optimizer(model, kind)
    train_steps(model, opt, 2)
    save_checkpoint(tmp_path / "run" / "last", model_state=model.state_dict(),
                    optimizer_state=opt.state_dict(), extra={"epoch": 2, "step": 2})  # fmt: skip
    train_steps(model, opt, 2)  # the uninterrupted run

    resumed = make_model(99)  # different initial weights: everything must come from the file
    resumed_opt = make_optimizer(resumed, kind)
    model_state, opt_state, extra = load_checkpoint(tmp_path / "run" / "last.safetensors")
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    restore_rng_state(*extra["rng"])
    assert extra["epoch"] == 2 and extra["step"] == 2
    train_steps(resumed, resumed_opt, 2)

    assert_same_state(model, resumed)
    assert resumed_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_optimizer_state_reconstructed_exactly(tmp_path):
    model = make_model(0)
    opt = make_optimizer(model, "adam")
    train_steps(model, opt, 1)
    save_checkpoint(tmp_path / "c", model_state=model.state_dict(),
                    optimizer_state=opt.state_dict(), extra={})  # fmt: skip
    _, loaded, _ = load_checkpoint(tmp_path / "c")
    original = opt.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    assert loaded["param_groups"][0]["betas"] == (0.8, 0.95)  # a tuple again, not a list
    assert loaded["state"].keys() == original["state"].keys()  # int keys again
    for pid, entries in original["state"].items():
        for key, value in entries.items():
            assert torch.equal(loaded["state"][pid][key], value)


def test_extra_round_trip_and_readable_copy(tmp_path):
    shared = torch.arange(6.0)
    extra = {
        "epoch": 7,
        "metrics": {"val_pgd_acc": 0.4375, "loss": float("nan"), "best": True, "note": None},
        "scheduler": {"base_lrs": [0.1], "milestones": {60: 1, 90: 1}, "pair": (1, "a")},
        "kappa_hist": torch.tensor([3, 1, 0]),
        "twice": [shared, shared],  # memory shared between entries
    }
    save_checkpoint(tmp_path / "x", model_state={"w": shared}, optimizer_state=None, extra=extra)
    model_state, opt_state, loaded = load_checkpoint(tmp_path / "x.safetensors")
    assert opt_state is None and torch.equal(model_state["w"], shared)
    assert loaded["epoch"] == 7 and loaded["scheduler"]["milestones"] == {60: 1, 90: 1}
    assert loaded["scheduler"]["pair"] == (1, "a")
    assert math.isnan(loaded["metrics"]["loss"]) and loaded["metrics"]["best"] is True
    assert torch.equal(loaded["kappa_hist"], extra["kappa_hist"])
    assert all(torch.equal(t, shared) for t in loaded["twice"])
    readable = json.loads((tmp_path / "x.json").read_text())
    assert readable["extra"]["epoch"] == 7 and "model.w" in readable["tensors"]
    (tmp_path / "x.json").unlink()  # the loader never needs the copy
    assert load_checkpoint(tmp_path / "x")[2]["epoch"] == 7


def test_tensor_keys_carry_prefixes(tmp_path):
    path = saved_file(tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.") for k in keys)
    assert any(k.startswith("optim.state.") for k in keys)
    assert "rng.torch_cpu" in keys
    assert {k.split(".")[0] for k in keys} <= {"model", "optim", "rng", "extra"}


def test_rng_key_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "r", model_state={}, optimizer_state=None, extra={"rng": 1})


# ---------------------------------------------------------------------------------------------
# damaged, foreign and edited files


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 100, "half", -1])
def test_truncated_file(tmp_path, keep):
    path = saved_file(tmp_path)
    raw = path.read_bytes()
    cut = {"half": len(raw) // 2}.get(keep, keep)
    path.write_bytes(raw[:cut])
    with pytest.raises(UserError, match="unreadable or not an advc checkpoint"):
        load_checkpoint(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="unreadable or not an advc checkpoint"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(UserError, match="not an advc checkpoint"):
        load_checkpoint(path)


def test_edited_metadata_is_rejected(tmp_path):
    path = saved_file(tmp_path)

    def edit(meta):
        state = json.loads(meta["advc"])
        state["extra"]["epoch"] = 99
        meta["advc"] = json.dumps(state)

    rewrite_metadata(path, edit)
    with pytest.raises(UserError, match="checksum"):
        load_checkpoint(path)


def test_forged_metadata_cannot_execute_code(tmp_path, monkeypatch):
    """Even with a recomputed checksum, edited JSON only ever yields plain data or an error."""
    path = saved_file(tmp_path)
    marker = tmp_path / "pwned"
    payloads = {
        "__reduce__": ["os.system", f"touch {marker}"],
        "__class__": "subprocess.Popen",
        "code": f"__import__('os').system('touch {marker}')",
    }

    def forge(edit_state):
        def edit(meta):
            state = json.loads(meta["advc"])
            edit_state(state)
            meta["advc"] = json.dumps(state)
            raw_tensors = load_raw_tensors(path)
            meta["advc_sha256"] = ckpt._digest(meta["advc"], raw_tensors)

        rewrite_metadata(path, edit)

    forge(lambda s: s["extra"].update(payloads))
    _, _, extra = load_checkpoint(path)
    assert extra["code"] == payloads["code"] and not marker.exists()

    forge(lambda s: s["extra"].update(bad={"__tensor__": "model.nope"}))
    with pytest.raises(UserError, match="inconsistent"):
        load_checkpoint(path)
    forge(lambda s: s.update(format="something-else"))
    with pytest.raises(UserError, match="not an advc checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def load_raw_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------------------------
# atomic replacement


def test_stale_temp_file_is_ignored_then_cleaned(tmp_path):
    path = saved_file(tmp_path, epoch=1)
    complete = path.read_bytes()
    stale = tmp_path / ".last.safetensors.tmp-4242-deadbeef"
    stale.write_bytes(complete[: len(complete) // 3])  # a save that crashed half-way
    assert load_checkpoint(path)[2]["epoch"] == 1  # the old complete file
    saved_file(tmp_path, epoch=2)
    assert not stale.exists()
    assert load_checkpoint(path)[2]["epoch"] == 2
    assert not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_crash_during_save_keeps_old_checkpoint(tmp_path, monkeypatch, crash_in):
    path = saved_file(tmp_path, epoch=1)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt.os, crash_in, crash)
    with pytest.raises(KeyboardInterrupt):
        saved_file(tmp_path, epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)[2]["epoch"] == 1


def test_replace_is_the_commit_point(tmp_path, monkeypatch):
    """The destination only ever changes through one os.replace of a complete temp file."""
    path = saved_file(tmp_path, epoch=1)
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        if str(dst) == str(path):  # the temp file is already complete when it is renamed
            copy = tmp_path / "copy.safetensors"
            copy.write_bytes(Path(src).read_bytes())
            seen.append(load_checkpoint(copy)[2]["epoch"])
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", spy)
    saved_file(tmp_path, epoch=5)
    assert seen == [5]


# ---------------------------------------------------------------------------------------------
# RNG state


def test_rng_capture_restore():
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    tensors, state = capture_rng_state()
    json.dumps(state)  # all of it is JSON
    first = (torch.rand(3), random.random(), np.random.randn(2))
    restore_rng_state(tensors, state)
    second = (torch.rand(3), random.random(), np.random.randn(2))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert np.array_equal(first[2], second[2])


def test_invalid_rng_state_is_a_user_error():
    tensors, state = capture_rng_state()
    state["numpy"][1] = [1, 2, 3]
    with pytest.raises(UserError, match="random-number-generator"):
        restore_rng_state(tensors, state)
