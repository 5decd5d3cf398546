"""Bad input everywhere: one clear error line, a non-zero exit, and nothing half-written.

Every case drives the real command line (a subprocess), as a user would. "Nothing
half-written" means: no run folder appears, or an existing run folder is byte-for-byte
unchanged. Cases already covered in ``tests/runtime/test_run.py`` (missing data folder, unknown
model, bad ``--set``, ``--gpus`` beyond the machine) are not repeated here; see
``docs/reliability.md`` for the full map.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advc.errors import UserError
from advc.runtime.data import write_cifar10_archive

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"


def advc(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "advc", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, exactly one ``error`` line, which names every needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, both
    errors = [line for line in proc.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden temporaries included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def spec_with(tmp_path: Path, *, data: str | None = None, model: str | None = None) -> Path:
    text = QUICKSTART.read_text()
    if data is not None:
        text = re.sub(r"data\s+digits", f"data    {data}", text)
    if model is not None:
        text = re.sub(r"model\s+small_cnn", f"model   {model}", text)
    spec = tmp_path / "case.adv"
    spec.write_text(text)
    return spec


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["run", QUICKSTART], ["eval", "runs/x"], ["check", QUICKSTART]]
)
def test_unknown_cli_option_is_named_and_nothing_is_written(tmp_path, command):
    proc = advc(*command, "--bogus-option", "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    # one line: what is wrong and where to look
    assert_one_error_line(proc, "No such option: --bogus-option", "--help")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "eval"])
def test_missing_spec_file_is_one_line(tmp_path, command):
    missing = tmp_path / "nowhere.adv"
    if command == "run":
        proc = advc("run", missing, "--out", tmp_path / "run", cwd=tmp_path)
    else:
        (tmp_path / "ckpt.safetensors").write_bytes(b"")
        proc = advc("eval", tmp_path / "ckpt.safetensors", "--spec", missing, cwd=tmp_path)
    assert_one_error_line(proc, str(missing))
    assert not (tmp_path / "run").exists()


# --- data ------------------------------------------------------------------------------------


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_data_folder_is_one_line(tmp_path):
    folder = write_cifar10_archive(tmp_path / "data", 4)
    folder.chmod(0)
    try:
        spec = spec_with(tmp_path, data=f'cifar10(root = "{tmp_path / "data"}")')
        proc = advc("run", spec, "--out", tmp_path / "run", cwd=tmp_path)
    finally:
        folder.chmod(0o755)
    assert_one_error_line(proc, "cifar")
    assert not (tmp_path / "run").exists()


def test_a_file_where_the_data_folder_should_be_is_one_line(tmp_path):
    # as root, chmod 000 does not make a folder unreadable; a file in its place is the
    # unreadable folder every user can produce
    (tmp_path / "data").write_text("not a folder\n")
    spec = spec_with(tmp_path, data=f'cifar10(root = "{tmp_path / "data"}")')
    proc = advc("run", spec, "--out", tmp_path / "run", cwd=tmp_path)
    assert_one_error_line(proc, "cifar10", str(tmp_path / "data"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("label", [10, -1])
def test_cifar_label_out_of_range_is_one_line(tmp_path, label):
    folder = write_cifar10_archive(tmp_path / "data", 4)
    batch_file = folder / "data_batch_2"
    with open(batch_file, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"labels"][1] = label
    with open(batch_file, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    spec = spec_with(tmp_path, data=f'cifar10(root = "{tmp_path / "data"}")')
    proc = advc("run", spec, "--out", tmp_path / "run", cwd=tmp_path)
    line = assert_one_error_line(proc, "labels must lie in [0, 10)", str(label))
    assert line == (
        f"error: cifar10 file data_batch_2: field 'labels' holds {label}, but labels must lie "
        f"in [0, 10) ({batch_file}) -- hint: the file is damaged or forged; download the "
        "archive again"
    )
    assert not (tmp_path / "run").exists()


def _float_pixels(batch: dict) -> tuple[str, str]:
    batch[b"data"] = batch[b"data"].astype("float64")
    batch[b"data"][0, 0] = float("nan")
    return (
        "cifar10 file data_batch_1: field 'data' holds a (4, 3072) float64 array, expected a "
        "(N, 3072) uint8 array",
        "CIFAR pixels are stored as uint8 (0..255) and advc does not convert them; download "
        "the archive again",
    )


def _float_labels(batch: dict) -> tuple[str, str]:
    batch[b"labels"][2] = 2.5
    return (
        "cifar10 file data_batch_1: field 'labels' holds floats (2.5), expected integer class "
        "labels",
        "the file is damaged or forged; download the archive again",
    )


def _memo_bomb(batch: dict) -> tuple[str, str]:
    row = list(range(256)) * 12  # one 3072-pixel row, pickled once, referenced 20 000 times
    batch[b"data"], batch[b"labels"] = [row] * 20000, [i % 10 for i in range(20000)]
    return (
        "cifar10 file data_batch_1: field 'data' holds a list of 20000 items, expected a "
        "(N, 3072) uint8 array",
        "CIFAR pixels are stored as uint8 (0..255) and advc does not convert them; download "
        "the archive again",
    )


HOSTILE_CIFAR = {"float pixels": _float_pixels, "float labels": _float_labels, "memo bomb": _memo_bomb}


@pytest.mark.parametrize("case", sorted(HOSTILE_CIFAR))
def test_hostile_cifar_file_is_one_line_exit_1_and_writes_nothing(tmp_path, case):
    folder = write_cifar10_archive(tmp_path / "data", 4)
    batch_file = folder / "data_batch_1"
    with open(batch_file, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    message, hint = HOSTILE_CIFAR[case](batch)
    with open(batch_file, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    before = snapshot(tmp_path / "data")
    spec = spec_with(tmp_path, data="cifar10")
    proc = advc("run", spec, "--data-root", tmp_path / "data", "--out", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    line = assert_one_error_line(proc)
    assert line == f"error: {message} ({batch_file}) -- hint: {hint}"
    assert not (tmp_path / "run").exists()
    assert snapshot(tmp_path / "data") == before


def test_one_class_cifar_data_is_one_line_exit_1_and_writes_nothing(tmp_path):
    folder = write_cifar10_archive(tmp_path / "data", 4)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch[b"labels"] = [7] * 4
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    spec = spec_with(tmp_path, data="cifar10")
    proc = advc("run", spec, "--data-root", tmp_path / "data", "--out", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert assert_one_error_line(proc) == (
        "error: cifar10 training split holds only class 7 ('horse'), expected at least 2 "
        f"classes ({folder}) -- hint: a classifier trained on one class scores 100 % without "
        "learning anything; check that every training file is there and complete"
    )
    assert not (tmp_path / "run").exists()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    folder = write_cifar10_archive(tmp_path / "data", 4)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"labels": [0], b"data": _Boom()}, f, protocol=2)
    spec = spec_with(tmp_path, data=f'cifar10(root = "{tmp_path / "data"}")')
    proc = advc("run", spec, "--out", tmp_path / "run", cwd=tmp_path)
    assert_one_error_line(proc, "refusing to load global")
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "run").exists()


def test_images_outside_zero_one_are_rejected():
    # every on-disk format advc reads is uint8, so out-of-range pixels can only come from a
    # damaged conversion; the gate all loaders share is checked directly
    from advc.runtime.data import _validate

    x = torch.full((2, 1, 8, 8), 0.5)
    x[0, 0, 0, 0] = 1.5
    with pytest.raises(UserError, match=r"pixel values must lie in \[0, 1\]"):
        _validate("digits", x, torch.tensor([0, 1]), 10, "train")
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match=r"pixel values"):
        _validate("digits", x, torch.tensor([0, 1]), 10, "train")


# --- the model -------------------------------------------------------------------------------

MODELS = """\
from torch import nn


def three_classes(*, in_channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 3))


def cifar_shaped(*, in_channels, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
"""


@pytest.mark.parametrize(
    ("callable_", "needle"),
    [("three_classes", "outputs shape (2, 3)"), ("cifar_shaped", "cannot run on these images")],
)
def test_model_that_does_not_fit_the_data_is_one_line(tmp_path, callable_, needle):
    (tmp_path / "usermodels.py").write_text(MODELS)
    spec = spec_with(tmp_path, model=f'"usermodels:{callable_}"')
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    }
    proc = advc("run", spec, "--out", tmp_path / "run", "--trust-code", cwd=tmp_path, env=env)
    assert_one_error_line(proc, needle, "digits has 10 classes")
    assert not (tmp_path / "run").exists()


# --- checkpoints -----------------------------------------------------------------------------


TRAINED_WITH = ["--set", "train.epochs=1", "--no-eval", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real run folder (quickstart, one epoch) to tamper with."""
    base = tmp_path_factory.mktemp("trained")
    out = base / "run"
    proc = advc("run", QUICKSTART, "--out", out, *TRAINED_WITH, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return out


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor bytes
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_header(path: Path) -> None:
    # a plausible edit: change the epoch in the JSON header, keep the file well-formed
    data = path.read_bytes()
    patched = data.replace(b'\\"epoch\\":0', b'\\"epoch\\":7', 1)  # JSON inside JSON
    assert patched != data
    path.write_bytes(patched)


def _pickle_payload(path: Path) -> None:
    # a torch.save pickle that would run a command when unpickled, under the checkpoint's name
    torch.save({"model": _Boom()}, path)


TAMPER = {
    "flipped byte": (_flip_byte, "checksum mismatch"),
    "truncated": (_truncate, "unreadable"),
    "edited header": (_edit_header, "unreadable"),
    "pickle in disguise": (_pickle_payload, "unreadable"),
    "empty": (lambda p: p.write_bytes(b""), "unreadable"),
}


@pytest.mark.parametrize("how", sorted(TAMPER))
def test_tampered_checkpoint_is_one_line_for_eval_and_resume(trained, tmp_path, how):
    tamper, needle = TAMPER[how]
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    last = out / "checkpoints" / "last.safetensors"
    tamper(last)
    before = snapshot(out)

    ev = advc("eval", last, "--spec", QUICKSTART, "--attacks", "natural", "--n", "8", cwd=tmp_path)
    assert_one_error_line(ev, needle, str(last))
    resumed = advc("run", QUICKSTART, "--out", out, "--resume", *TRAINED_WITH, cwd=tmp_path)
    assert_one_error_line(resumed, needle, str(last))

    assert snapshot(out) == before  # the run folder is exactly as it was
    assert not (tmp_path / "PWNED").exists()


def test_resume_with_other_overrides_leaves_the_run_folder_unchanged(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = snapshot(out)
    proc = advc(
        "run", QUICKSTART, "--out", out, "--resume", "--set", "attack.steps=3", "--no-eval",
        "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert_one_error_line(proc, "the spec or its overrides changed")
    assert snapshot(out) == before
