"""Crash safety of ``advc run``: SIGKILL at many points, then resume; NaN stops a run cleanly.

Every kill hits a real ``python -m advc run`` subprocess of the quickstart. Kill points are
chosen two ways: *targeted* -- before the first checkpoint, and while a checkpoint's
temporary file exists (the write window of ``runtime/checkpoint.py``: written, not yet
renamed into place) -- and *random* delays drawn from a seeded RNG. To make the write window
wide enough to hit from outside, a ``sitecustomize`` put on the child's ``PYTHONPATH`` slows
down ``os.fsync`` of checkpoint temporary files (only their timing changes, not what is
written). After each kill:

* every ``*.safetensors`` file in the run folder loads with ``load_checkpoint`` (never an
  unreadable checkpoint on disk);
* the run is finished -- ``--resume`` when a last checkpoint exists, otherwise a fresh start
  in the same folder (what ``advc run`` allows when the folder holds no checkpoint) -- and its
  best and last weights are bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from advc.runtime.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)"),
]

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
EPOCHS = 3
COMMON = ["--set", f"train.epochs={EPOCHS}", "--no-eval", "--quiet"]
SLOW_FSYNC_S = 0.25

# Loaded by the child interpreter at start-up (``site`` imports ``sitecustomize`` from sys.path).
SITECUSTOMIZE = """\
import os
import time

_fsync = os.fsync


def _slow_fsync(fd):
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if ".safetensors.tmp-" in name:
        time.sleep(float(os.environ.get("ADVC_TEST_SLOW_FSYNC", "0")))
    return _fsync(fd)


os.fsync = _slow_fsync
"""


def _env(hook_dir: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ADVC_TEST_SLOW_FSYNC=str(SLOW_FSYNC_S))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH")]))
    return env


def _command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "advc",
        "run",
        str(QUICKSTART),
        "--out",
        str(out),
        *COMMON,
        *extra,
    ]


def _run(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(out, *extra),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _advc_run(spec: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "advc", "run", str(spec), "--out", str(out), *args],
        cwd=out.parent,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _model(path: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_checkpoint(path)
    return model


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _load_every_checkpoint(out: Path) -> dict[str, int]:
    """Load every checkpoint file in the run folder; {name: epoch}. Fails on an unreadable one."""
    found = {}
    for path in sorted(out.rglob("*.safetensors")):
        _, _, extra = load_checkpoint(path)  # raises UserError for a damaged file
        found[path.name] = int(extra["epoch"])
    return found


def _temps(folder: Path, name: str) -> set[str]:
    try:
        return {n for n in os.listdir(folder) if n.startswith(f".{name}.tmp-")}
    except FileNotFoundError:
        return set()


def _kill_when(out: Path, env: dict, trigger) -> tuple[int, str]:
    """Start a run, SIGKILL it as soon as ``trigger(elapsed)`` returns a description."""
    proc = subprocess.Popen(
        _command(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    start = time.monotonic()
    where = "finished before the kill"
    try:
        while proc.poll() is None and time.monotonic() - start < 300:
            hit = trigger(time.monotonic() - start)
            if hit:
                proc.send_signal(signal.SIGKILL)
                where = hit
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and where == "finished before the kill":
            proc.kill()
        proc.wait()
    return proc.returncode, where


def _after_folder(out: Path):
    def trigger(_elapsed):
        ckpt = out / "checkpoints"
        if (out / "objective.py").is_file() and not any(ckpt.glob("*.safetensors")):
            return "run folder written, no checkpoint yet"
        return None

    return trigger


def _during_write(out: Path, name: str, nth: int):
    seen: set[str] = set()

    def trigger(_elapsed):
        now = _temps(out / "checkpoints", name)
        seen.update(now)
        if len(seen) >= nth and now:
            return f"during write #{nth} of {name} (temporary file on disk)"
        return None

    return trigger


def _after_delay(delay: float, out: Path):
    def trigger(elapsed):
        if elapsed >= delay:
            writing = sorted(
                n for n in _temps(out / "checkpoints", "best.safetensors")
                | _temps(out / "checkpoints", "last.safetensors")
            )  # fmt: skip
            return f"after {delay:.2f}s" + (" (during a checkpoint write)" if writing else "")
        return None

    return trigger


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hook_dir) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.monotonic()
    proc = _run(out, _env(hook_dir))
    assert proc.returncode == 0, proc.stderr
    return out, time.monotonic() - t0


def _scenario(kind: str, arg, base: Path, env: dict) -> dict:
    out = base / "run"
    trigger = {
        "folder": lambda: _after_folder(out),
        "write": lambda: _during_write(out, *arg),
        "delay": lambda: _after_delay(arg, out),
    }[kind]()
    rc, where = _kill_when(out, env, trigger)
    killed = rc == -signal.SIGKILL
    on_disk = _load_every_checkpoint(out) if out.exists() else {}
    stale = (
        sorted(n for n in os.listdir(out / "checkpoints")) if (out / "checkpoints").is_dir() else []
    )
    last = out / "checkpoints" / "last.safetensors"
    resumed = last.is_file()
    finish = _run(out, env, *(["--resume"] if resumed else []))
    return {
        "kind": kind,
        "where": where,
        "killed": killed,
        "checkpoints_at_kill": on_disk,
        "files_at_kill": stale,
        "resumed": resumed,
        "finish": finish,
        "out": out,
    }


def test_sigkill_at_many_points_then_resume_gives_the_uninterrupted_weights(
    reference, hook_dir, tmp_path
):
    ref_out, ref_seconds = reference
    env = _env(hook_dir)
    rng = random.Random(20261125)
    delays = [rng.uniform(1.0, 0.95 * ref_seconds)]  # one random point besides the targeted ones
    scenarios = [
        ("folder", None),
        ("write", ("best.safetensors", 1)),  # the very first checkpoint write: nothing on disk
        ("write", ("last.safetensors", 3)),  # the final epoch's last: best often newer than last
        *[("delay", d) for d in delays],
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(_scenario, kind, arg, tmp_path / f"s{i}", env)
            for i, (kind, arg) in enumerate(scenarios)
        ]
        results = [f.result() for f in futures]

    ref_last = _model(ref_out / "checkpoints" / "last.safetensors")
    ref_best = _model(ref_out / "checkpoints" / "best.safetensors")
    kills = 0
    report = []
    for res in results:
        report.append(
            f"{res['kind']}: {res['where']}; checkpoints at kill {res['checkpoints_at_kill']}; "
            f"{'resumed' if res['resumed'] else 'fresh start'}"
        )
        finish = res["finish"]
        assert finish.returncode == 0, (res["where"], finish.stderr)
        out = res["out"]
        _assert_same(ref_last, _model(out / "checkpoints" / "last.safetensors"))
        _assert_same(ref_best, _model(out / "checkpoints" / "best.safetensors"))
        epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(EPOCHS)), (res["where"], epochs)
        _load_every_checkpoint(out)
        if res["killed"]:
            kills += 1
        if res["kind"] != "delay":  # targeted points must really be hit
            assert res["killed"], res["where"]
        if res["kind"] == "write":
            assert "during write" in res["where"]
    print("\n".join(report))
    assert kills >= 3, report  # every targeted point, at least
    assert any(not r["resumed"] for r in results if r["killed"])  # the fresh-start path ran
    assert any(r["resumed"] for r in results if r["killed"])  # the --resume path ran


NAN_OPTIM = "sgd(lr = piecewise(0: 0.05, 1: 1e30), momentum = 0.9)"
#: what advc check rightly says of these runs (a 1e30 rate, the quickstart's schedules cut short)
ALLOW = ("--allow", "large-lr", "--allow", "unreachable-schedule", "--allow", "weights-never-start")


def test_nan_loss_stops_the_run_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    text = QUICKSTART.read_text()
    text, n = re.subn(r"optim\s+sgd\(.*\)", f"optim   {NAN_OPTIM}", text)
    assert n == 1
    spec = tmp_path / "nan.adv"
    spec.write_text(text)
    out = tmp_path / "run"
    proc = _advc_run(spec, out, "--set", "train.epochs=2", "--no-eval", "--quiet", *ALLOW)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert re.search(r"became (nan|inf|nan/inf) at epoch 1/1, step \d+/\d+", line), line
    last = out / "checkpoints" / "last.safetensors"
    assert str(last) in line and "lower the learning rate" in line
    model, optim, extra = load_checkpoint(last)  # the last good checkpoint: epoch 1 (0-based 0)
    assert extra["epoch"] == 0 and optim is not None
    assert all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point())
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0]


def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path):
    text = re.sub(
        r"optim\s+sgd\(.*\)", "optim   sgd(lr = 1e30, momentum = 0.9)", QUICKSTART.read_text()
    )
    spec = tmp_path / "nan0.adv"
    spec.write_text(text)
    out = tmp_path / "run"
    proc = _advc_run(spec, out, "--set", "train.epochs=1", "--no-eval", "--quiet", *ALLOW)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "at epoch 0/0, step" in lines[0], proc.stderr
    assert "no checkpoint was written" in lines[0]
    assert not list(out.rglob("*.safetensors"))


def test_nan_in_two_gloo_processes_stops_both_without_a_hang(tmp_path):
    # every process reduces the same "not finite" flag after each step, so all of them stop
    # at the same step and none waits forever in the next collective
    text = re.sub(r"optim\s+sgd\(.*\)", f"optim   {NAN_OPTIM}", QUICKSTART.read_text())
    spec = tmp_path / "nan2.adv"
    spec.write_text(text)
    out = tmp_path / "run"
    proc = _advc_run(
        spec, out, "--set", "train.epochs=2", "--no-eval", "--quiet", "--cpu-procs", "2"
    )  # _advc_run's timeout (300 s) is the hang detector
    assert proc.returncode != 0
    # the main process says it once; the launcher's ChildFailedError report is dropped
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and re.search(r"at epoch 1/1, step \d+/\d+", lines[0]), proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    _, _, extra = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert extra["epoch"] == 0
