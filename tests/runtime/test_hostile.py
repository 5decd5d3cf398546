"""Issue #12's hostile corpus: what a hostile user -- or a run folder someone sent -- tries.

Each test states one boundary and asserts the exact outcome: the one ``error:`` line (what,
where, hint), that no canary code ran, that a refused run folder is byte-for-byte as it was,
or that an accepted one gives exactly the numbers of the untouched folder. The run folder is a
real one-epoch quickstart run (``tests/fuzz/fuzz_runfolder.py`` trains it; ``resign`` there
forges checkpoints with a recomputed digest). ``advc eval`` and ``advc run --resume`` on run
folders go through ``advc.cli.main`` in this process (as the fuzzer does); what depends on the
process itself -- ``sys.path``, two runs at once, resource limits, permissions -- runs
``python -m advc`` in a subprocess. The map from case to test is in ``docs/reliability.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advc.runtime.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
QUICKSTART = ROOT / "specs" / "quickstart.adv"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load("advc_fuzz_runfolder", ROOT / "tests" / "fuzz" / "fuzz_runfolder.py")
bad_input = _load("advc_test_bad_input", HERE / "test_bad_input.py")
advc, assert_one_error_line = bad_input.advc, bad_input.assert_one_error_line
snapshot = fuzz.snapshot
CANARY = fuzz.CANARY
MODEL = f"{CANARY}:make"
EDITED = "the run folder was edited or damaged; evaluate a checkpoint with --spec, or run it again"
REBUILD = "the folder was edited; evaluate a checkpoint with --spec SPEC"
TRUST = "advc runs code a spec names only when you trust it: add --trust-code"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """quickstart, one epoch, evaluate ``natural pgd(steps = 3)`` on 40 test samples."""
    return fuzz.train_base(tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(trained, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out, symlinks=True)
    return out


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> list[str]:
    """The header and table ``advc eval`` prints for the untouched folder."""
    out = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(trained, out, symlinks=True)
    done = evaluate(out)
    assert done.code == 0, done.stderr
    return fuzz.eval_table(done.stdout)


@pytest.fixture
def canary(tmp_path, monkeypatch) -> Path:
    """A module that writes ``CANARY-RAN`` when imported or called, importable from this process
    (``sys.path``) and from subprocesses (``PYTHONPATH``): importing it by mistake would succeed."""
    folder = tmp_path / "canary"
    folder.mkdir()
    ran = tmp_path / "CANARY-RAN"
    (folder / f"{CANARY}.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('imported')\n\n\n"
        "def make(*, in_channels, num_classes):\n"
        "    from advc.runtime.models import build_model\n\n"
        "    return build_model('small_cnn', in_channels=in_channels, num_classes=num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    yield ran
    sys.modules.pop(CANARY, None)


def assert_canary_never_ran(ran: Path) -> None:
    assert not ran.exists() and CANARY not in sys.modules


def evaluate(folder: Path, *extra: str):
    return fuzz.run_in_process(["eval", str(folder), *fuzz.EVAL_ARGS, *extra], timeout=120)


def resume(folder: Path, *extra: str):
    return fuzz.run_in_process(["run", str(QUICKSTART), *fuzz.TRAIN, "--eval-n", str(fuzz.N), "--quiet",
                                "--out", str(folder), "--resume", *extra], timeout=300)  # fmt: skip


def only_error(outcome) -> str:
    """The single ``error:`` line of a refused command (no traceback, non-zero exit)."""
    assert outcome.traceback is None, outcome.traceback
    assert outcome.code != 0, outcome.stdout
    errors = fuzz.error_lines(outcome.stderr)
    assert len(errors) == 1, outcome.stderr
    return errors[0]


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


# --- 1. advc eval does not trust an edited record ---------------------------------------------


def test_eval_never_reads_resolved_json(run, reference, canary):
    edit_json(run / "resolved.json", lambda r: r["settings"].update(
        {"train.model": MODEL, "threat.eps": 0.0, "evaluate": "Natural"}))  # fmt: skip
    done = evaluate(run, "--trust-code")
    assert done.code == 0, done.stderr
    assert fuzz.eval_table(done.stdout) == reference
    (run / "resolved.json").write_bytes(b"\xff not json")
    assert fuzz.eval_table(evaluate(run).stdout) == reference
    assert_canary_never_ran(canary)


@pytest.mark.parametrize(("key", "value"), [("threat.eps", 0.0), ("train.model", MODEL), ("evaluate", "Natural"),
                                            ("eval.n", 5)])  # fmt: skip
def test_eval_ignores_the_experiment_record_in_run_json(run, reference, canary, key, value):
    edit_json(run / "run.json", lambda r: r["experiment"].update({key: value}))
    done = evaluate(run, "--trust-code")
    assert done.code == 0, done.stderr
    assert fuzz.eval_table(done.stdout) == reference
    assert_canary_never_ran(canary)


@pytest.mark.parametrize("override", [f'train.model="{MODEL}"', "threat.eps=0.05", "train.seed=1"])
def test_eval_refuses_run_json_overrides_that_change_training_and_runs_nothing(run, canary, override):
    edit_json(run / "run.json", lambda r: r["overrides"].append(override))
    before = snapshot(run)
    line = only_error(evaluate(run, "--trust-code"))
    assert line == (f"error: the run folder's spec files do not rebuild the run they claim (training identity "
                    f"differs) ({run / 'spec'}) -- hint: {REBUILD}")  # fmt: skip
    assert snapshot(run) == before
    assert_canary_never_ran(canary)


def _evaluate_override(run: Path) -> None:  # a weaker PGD under the same label: PGD-3
    edit_json(run / "run.json", lambda r: r["overrides"].__setitem__(
        1, "evaluate=natural pgd(steps = 3, step_size = 0.0001)"))  # fmt: skip


def _spec_comment(run: Path) -> None:
    spec = run / "spec" / "quickstart.adv"
    spec.write_text(spec.read_text() + "\n# edited\n")


def _spec_evaluate_block(run: Path) -> None:
    spec = run / "spec" / "quickstart.adv"
    spec.write_text(spec.read_text().replace("pgd(steps = 100)", "pgd(steps = 1)"))


@pytest.mark.parametrize("edit", [_evaluate_override, _spec_comment, _spec_evaluate_block])
def test_eval_refuses_any_edit_of_the_recorded_spec_files_or_overrides(run, edit):
    # the evaluate list is not part of training: without the spec hash an edited one would
    # report e.g. a weaker PGD-3 under the same label (97.5 % instead of 67.5 % before the fix)
    edit(run)
    before = snapshot(run)
    line = only_error(evaluate(run))
    assert line == (f"error: the run folder's spec files or overrides were edited after the run (their hash "
                    f"differs from run.json's spec_hash) ({run / 'spec'}) -- hint: {REBUILD}")  # fmt: skip
    assert snapshot(run) == before


@pytest.mark.parametrize(("old", "new"), [("eps = 0.1", "eps = 0.2"), ("small_cnn", f'"{MODEL}"')])
def test_eval_refuses_a_spec_copy_that_changes_training_even_with_trust_code(run, canary, old, new):
    spec = run / "spec" / "quickstart.adv"
    spec.write_text(spec.read_text().replace(old, new, 1))
    before = snapshot(run)
    line = only_error(evaluate(run, "--trust-code"))
    assert line == (f"error: the run folder's spec files do not rebuild the run they claim (training identity "
                    f"differs) ({run / 'spec'}) -- hint: {REBUILD}")  # fmt: skip
    assert snapshot(run) == before
    assert_canary_never_ran(canary)


def _entry_elsewhere(run: Path) -> tuple[str, str]:
    edit_json(run / "run.json", lambda r: r.update(entry="/etc/passwd"))
    return "run.json field 'entry' names no file the folder keeps a copy of", str(run / "run.json")


def _copy_links_out(run: Path) -> tuple[str, str]:
    spec = run / "spec" / "quickstart.adv"
    spec.unlink()
    spec.symlink_to(QUICKSTART)
    return "the run folder's spec/quickstart.adv points outside the folder", str(spec)


def _copy_is_dev_zero(run: Path) -> tuple[str, str]:
    spec = run / "spec" / "quickstart.adv"
    spec.unlink()
    spec.symlink_to("/dev/zero")  # read to the end, it never ends
    return "the run folder's spec/quickstart.adv points outside the folder", str(spec)


def _copy_is_a_fifo(run: Path) -> tuple[str, str]:
    spec = run / "spec" / "quickstart.adv"
    spec.unlink()
    os.mkfifo(spec)  # opened for reading, it waits for a writer forever
    return "the run folder's spec/quickstart.adv is not a regular file", str(spec)


def _run_json_is_huge(run: Path) -> tuple[str, str]:
    edit_json(run / "run.json", lambda r: r.update(note="x" * 5_000_000))
    return "the run folder's run.json is larger than 4194304 bytes", str(run / "run.json")


@pytest.mark.parametrize("case", [_entry_elsewhere, _copy_links_out, _copy_is_dev_zero, _copy_is_a_fifo,
                                  _run_json_is_huge])  # fmt: skip
def test_eval_reads_only_regular_files_inside_the_run_folder(run, case):
    message, where = case(run)
    before = snapshot(run)
    t0 = time.perf_counter()
    line = only_error(evaluate(run))
    assert line == f"error: {message} ({where}) -- hint: {EDITED}"
    assert time.perf_counter() - t0 < 60  # never a hang
    assert snapshot(run) == before


def test_objective_py_in_a_run_folder_is_never_executed(run, reference, canary):
    (run / "objective.py").write_text(f"import pathlib\npathlib.Path({str(canary)!r}).write_text('ran')\n")
    done = evaluate(run)
    assert done.code == 0, done.stderr
    assert fuzz.eval_table(done.stdout) == reference
    done = resume(run)  # regenerates the program from the spec, never runs the folder's copy
    assert done.code == 0, done.stderr
    assert (run / "objective.py").read_text().startswith("# Generated by advc")
    assert_canary_never_ran(canary)


# --- 2. code a spec names runs only with --trust-code -------------------------------------------


def _canary_spec(folder: Path, model: str = MODEL) -> Path:
    spec = folder / "canary.adv"
    spec.write_text(QUICKSTART.read_text().replace("small_cnn", f'"{model}"', 1))
    return spec


def test_check_and_compile_never_import_the_module_a_spec_names(tmp_path, canary):
    spec = _canary_spec(tmp_path)
    done = advc("check", spec, cwd=tmp_path)
    assert done.returncode == 0 and f"{spec}: ok (objective quickstart)" in done.stdout, done.stderr
    done = advc("compile", spec, "-o", tmp_path / "objective.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f'user_model("{MODEL}", trust_code=args.trust_code' in (tmp_path / "objective.py").read_text()
    assert_canary_never_ran(canary)


def test_run_and_eval_without_trust_code_name_the_module_and_how_to_allow_it(tmp_path, trained, canary):
    spec = _canary_spec(tmp_path)
    expected = (f"error: the spec names the model {MODEL!r}, which imports and runs the module {CANARY!r} "
                f"({spec}) -- hint: {TRUST}")  # fmt: skip
    done = advc("run", spec, "--set", "train.epochs=1", "--out", tmp_path / "run", cwd=tmp_path)
    assert assert_one_error_line(done) == expected
    assert not (tmp_path / "run").exists()
    checkpoint = trained / "checkpoints" / "last.safetensors"
    done = advc("eval", checkpoint, "--spec", spec, "--attacks", "natural", cwd=tmp_path)
    assert assert_one_error_line(done) == expected
    assert_canary_never_ran(canary)


NEXT_DOOR = """\
import pathlib

pathlib.Path("CANARY-RAN").write_text("imported from the working folder")


def make(*, in_channels, num_classes):
    from advc.runtime.models import build_model

    return build_model("small_cnn", in_channels=in_channels, num_classes=num_classes)
"""


def test_python_m_advc_never_imports_from_the_working_folder(tmp_path):
    # a module shipped next to a spec shadows what advc imports (typer) or names a model
    (tmp_path / "typer.py").write_text('import pathlib\npathlib.Path("CANARY-RAN").write_text("typer")\n')
    (tmp_path / "nextdoor.py").write_text(NEXT_DOOR)
    spec = _canary_spec(tmp_path, "nextdoor:make")
    env = {"PYTHONPATH": ""}
    done = advc("check", spec.name, cwd=tmp_path, env=env)
    assert done.returncode == 0 and "canary.adv: ok" in done.stdout, done.stderr
    done = advc("run", spec.name, "--set", "train.epochs=1", "--out", "run", cwd=tmp_path, env=env)
    assert assert_one_error_line(done) == (
        "error: the spec names the model 'nextdoor:make', which imports and runs the module 'nextdoor' "
        f"(canary.adv) -- hint: {TRUST}")  # fmt: skip
    # trusted, the module still has to be on Python's path: the working folder is not, implicitly
    done = advc("run", spec.name, "--set", "train.epochs=1", "--out", "run", "--trust-code", cwd=tmp_path, env=env)
    assert assert_one_error_line(done) == (
        "error: cannot import module 'nextdoor': No module named 'nextdoor' (nextdoor:make) -- hint: name a model "
        "as package.module:callable, importable from Python's path (PYTHONPATH)")  # fmt: skip
    assert not (tmp_path / "CANARY-RAN").exists() and not (tmp_path / "run").exists()


def test_a_module_next_to_the_spec_runs_when_trusted_and_named_in_pythonpath(tmp_path):
    (tmp_path / "nextdoor.py").write_text(NEXT_DOOR)
    spec = _canary_spec(tmp_path, "nextdoor:make")
    done = advc("run", spec.name, "--set", "train.epochs=1", "--no-eval", "--quiet", "--out", "run", "--trust-code",
                cwd=tmp_path, env={"PYTHONPATH": "."})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "CANARY-RAN").read_text() == "imported from the working folder"
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()


# --- 3. run folders: one writer, never someone else's folder ------------------------------------


def test_a_second_run_into_the_same_folder_fails_at_once_and_the_first_keeps_every_epoch_once(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "advc", "run", str(QUICKSTART), "--set", "train.epochs=4", "--no-eval", "--quiet",
            "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # wait for a checkpoint: the folder now also looks like a finished run, yet the lock is what is said
        while not (out / "checkpoints" / "last.safetensors").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        t0 = time.monotonic()
        second = advc("run", QUICKSTART, "--set", "train.epochs=4", "--no-eval", "--quiet", "--out", out,
                      cwd=tmp_path)  # fmt: skip
        assert first.poll() is None, "the first run ended before the second was tried; nothing was tested"
        assert assert_one_error_line(second) == (
            f"error: another advc run is writing to this run folder ({out}) -- hint: wait for it to finish, or use "
            "another --out")  # fmt: skip
        assert time.monotonic() - t0 < 60
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]


def test_out_on_a_folder_holding_the_users_spec_is_refused_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(QUICKSTART, mine / "spec.adv")
    before = snapshot(mine)
    done = advc("run", mine / "spec.adv", "--set", "train.epochs=1", "--out", mine, cwd=tmp_path)
    assert assert_one_error_line(done) == (
        f"error: --out holds files that are not an advc run (spec.adv); nothing was changed ({mine}) -- hint: name a "
        "new or empty folder for the run")  # fmt: skip
    assert snapshot(mine) == before


def _drop_dac() -> list[str]:
    """A command prefix under which this user's permissions hold (root without CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("as root, permissions need setpriv to drop CAP_DAC_OVERRIDE")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@pytest.mark.parametrize("case", ["a file", "under /proc", "not writable"])
def test_out_that_cannot_hold_a_run_is_one_line(tmp_path, case):
    prefix: list[str] = []
    if case == "a file":
        out = tmp_path / "results.txt"
        out.write_text("mine\n")
        expected = f"error: --out names a file, not a folder ({out}) -- hint: name a new folder for the run"
    elif case == "under /proc":
        out = Path("/proc/self/advc-run")
        expected = f"error: --out must not be under /proc, /sys or /dev ({out}) -- hint: name a folder on disk"
    else:
        prefix = _drop_dac()
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "run"
        expected = f"error: cannot write there: permission denied ({locked}) -- hint: name a folder you can write to"
    before = snapshot(tmp_path)
    done = subprocess.run([*prefix, sys.executable, "-m", "advc", "run", str(QUICKSTART), "--set", "train.epochs=1",
                           "--out", str(out)], cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert assert_one_error_line(done) == expected
    assert snapshot(tmp_path) == before


def test_compile_output_naming_a_folder_is_one_line(tmp_path):
    done = advc("compile", QUICKSTART, "-o", tmp_path, cwd=tmp_path)
    assert assert_one_error_line(done) == f"error: -o names a folder ({tmp_path}) -- hint: name the .py file to write"
    assert list(tmp_path.iterdir()) == []


# --- 4. options and forged checkpoints -----------------------------------------------------------


def test_eval_batch_zero_fails_before_the_first_epoch(tmp_path):
    done = advc("run", QUICKSTART, "--eval-batch", "0", "--out", tmp_path / "run", cwd=tmp_path)
    assert assert_one_error_line(done) == "error: --eval-batch must be at least 1, got 0 (--eval-batch)"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("eps", "shown"), [("1e308", "1e+308"), ("1.5", "1.5")])
def test_linf_eps_above_one_fails_at_the_checker(tmp_path, eps, shown):
    done = advc("check", QUICKSTART, "--set", f"threat.eps={eps}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--set#1:1:12: error: 'eps' must be >= 0 and <= 1, got {shown}" in done.stderr


def _set_extra(key, value):
    return lambda s: s["extra"].__setitem__(key, value)


def _drop(*path):
    def edit(state):
        for key in path[:-1]:
            state = state[key]
        del state[path[-1]]

    return edit


def _rename_tensor(old: str, new: str):
    def edit(tensors):
        tensors[new] = tensors.pop(old)

    return edit


def _other_param(s):  # momentum of parameter 0 filed under parameter 99 (renamed consistently)
    s["optim"]["state"]["__items__"][0] = [99, {"momentum_buffer": {"__tensor__": "optim.state.99.momentum_buffer"}}]


def _swap_placeholder(s):  # point a weight at another tensor of the same shape
    s["model"]["features.1.weight"] = {"__tensor__": "model.features.1.bias"}


def _reshape(tensors):
    tensors["model.features.0.weight"] = tensors["model.features.0.weight"].reshape(-1)


def _half(tensors):
    tensors["model.classifier.3.weight"] = tensors["model.classifier.3.weight"].half()


def _nan(tensors):
    tensors["model.classifier.3.bias"] = tensors["model.classifier.3.bias"].clone()
    tensors["model.classifier.3.bias"][0] = float("nan")


FORGERIES = {
    "epoch 10^9": ((_set_extra("epoch", 10**9), None),
                   "checkpoint field 'epoch' must be a whole number in [0, 10000000], got 1000000000"),
    "epoch 'abc'": ((_set_extra("epoch", "abc"), None),
                    "checkpoint field 'epoch' must be a whole number in [0, 10000000], got 'abc'"),
    "best_metric missing": ((_drop("extra", "best_metric"), None),
                            "checkpoint field 'best_metric' must be an accuracy in [0, 100] (or -inf), got None"),
    "model section missing": ((_drop("model"), None),
                              "checkpoint {path} is unreadable or not an advc checkpoint: inconsistent state "
                              "(KeyError: 'model')"),
    "placeholder renamed": ((_swap_placeholder, None),
                            "checkpoint {path} is unreadable or not an advc checkpoint: inconsistent state (ValueError: "
                            "the tensor at model.features.1.weight is named 'model.features.1.bias')"),
    "wrong tensor shape": ((None, _reshape),
                           "the checkpoint's tensor 'features.0.weight' is shaped (144,), the model's (16, 1, 3, 3)"),
    "wrong dtype": ((None, _half), "the checkpoint's tensor 'classifier.3.weight' is float16, the model's float32"),
    "nan weight": ((None, _nan), "the checkpoint's tensor 'classifier.3.bias' holds nan or inf"),
    "optimizer state for another parameter": (
        (_other_param, _rename_tensor("optim.state.0.momentum_buffer", "optim.state.99.momentum_buffer")),
        "the checkpoint's optimizer state has an entry 99 for no parameter"),
}  # fmt: skip


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_checkpoint_is_one_line_for_eval_and_resume_and_changes_nothing(run, forgery):
    (edit_state, edit_tensors), message = FORGERIES[forgery]
    last = run / "checkpoints" / "last.safetensors"
    fuzz.resign(last, edit_state=edit_state, edit_tensors=edit_tensors)
    message = message.format(path=last)
    before = snapshot(run)
    for outcome in (evaluate(run), resume(run)):
        line = only_error(outcome)
        assert line.startswith(f"error: {message} ({last})"), line
        assert snapshot(run) == before  # nothing written, or everything put back


def test_a_forged_best_checkpoint_fails_a_resume_before_the_final_evaluation(run):
    best = run / "checkpoints" / "best.safetensors"
    fuzz.resign(best, edit_tensors=_reshape)
    before = snapshot(run)
    line = only_error(resume(run))
    assert line == (f"error: the checkpoint's tensor 'features.0.weight' is shaped (144,), the model's (16, 1, 3, 3) "
                    f"({best}) -- hint: it was written for another model or data set")  # fmt: skip
    assert snapshot(run) == before


# --- 5. disk full, permission: one line, the last good checkpoint kept -------------------------

# Loaded by the child interpreter at start-up: once the first epoch is logged (metrics.jsonl
# fsync'ed), every later write of more than 100 KB fails (EFBIG, the process ignores SIGXFSZ),
# or the checkpoints folder turns read-only -- as a disk filling up or a permission lost mid-run.
FAULT = """\
import os
import resource
import signal

_fsync = os.fsync


def _fault_after_first_epoch(fd):
    result = _fsync(fd)
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if name.endswith("metrics.jsonl"):
        if os.environ["ADVC_TEST_FAULT"] == "disk full":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        else:
            os.chmod(os.path.join(os.path.dirname(name), "checkpoints"), 0o555)
    return result


os.fsync = _fault_after_first_epoch
"""


@pytest.mark.parametrize(("fault", "strerror"), [("disk full", "File too large"),
                                                 ("permission lost", "Permission denied")])  # fmt: skip
def test_a_failing_write_mid_run_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, fault, strerror):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    out = tmp_path / "run"
    prefix = _drop_dac() if fault == "permission lost" else []
    env = dict(os.environ, OMP_NUM_THREADS="1", ADVC_TEST_FAULT=fault, PYTHONPATH=str(hook))
    args = ["run", str(QUICKSTART), "--set", "train.epochs=2", "--no-eval", "--quiet", "--out", str(out)]
    done = subprocess.run([*prefix, sys.executable, "-m", "advc", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    (out / "checkpoints").chmod(0o755)
    line = assert_one_error_line(done)
    assert re.fullmatch(rf"error: {strerror} \({re.escape(str(out))}/checkpoints/(best|last)\.safetensors\) -- "
                        r"hint: free disk space or fix permissions, then --resume", line), line  # fmt: skip
    _, _, extra = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert extra["epoch"] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best.json", "best.safetensors", "last.json", "last.safetensors"]  # no temporary left  # fmt: skip
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    # the disk has room again: the run continues where it stopped
    done = advc("run", QUICKSTART, "--set", "train.epochs=2", "--no-eval", "--quiet", "--out", out, "--resume",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_failed_metrics_append_is_cut_back_to_the_last_whole_line(tmp_path, monkeypatch):
    from advc.runtime.loop import METRICS, RunArgs, RunFolder

    class OneProcess:
        is_main_process, num_processes = True, 1

        def wait_for_everyone(self):
            pass

    folder = RunFolder(RunArgs(out=str(tmp_path), quiet=True), OneProcess(), spec="s", spec_hash="h",
                       training_id="t", epochs=3, seed=0)  # fmt: skip
    record = {"epoch": 0, "lr": 0.1, "loss": 2.0, "kappa_mean": 1.0, "kappa_hist": [1], "bps": 1,
              "bps_per_sample": 1.0, "passes": 1, "train_natural": 50.0, "train_adversarial": 40.0, "seconds": 1.0}
    folder.log(record, improved=True)
    whole = (tmp_path / METRICS).read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        folder.log(dict(record, epoch=1), improved=False)
    assert (tmp_path / METRICS).read_bytes() == whole


# --- 6. objectives that mean nothing -----------------------------------------------------------


def test_a_weight_that_goes_negative_stops_the_first_batch_naming_the_expression(tmp_path):
    done = advc("run", QUICKSTART, "--set", "train.epochs=1", "--set", "weight=margin", "--no-eval", "--quiet",
                "--out", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    line = assert_one_error_line(done)
    assert re.fullmatch(r"error: the weight margin is negative for \d+ of 64 samples at epoch 0 \(--set#2:1\) -- "
                        r"hint: instance weights must be >= 0 and not all zero: change the weight expression",
                        line), line  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("weight", "message"), [
    ("0", "--set#1:1:8: error: weight 0 makes every sample weigh nothing"),
    ("-1", "--set#1:1:8: error: the weight -1 is never positive"),
])  # fmt: skip
def test_a_weight_that_is_never_positive_fails_at_the_checker(tmp_path, weight, message):
    done = advc("check", QUICKSTART, "--set", f"weight={weight}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert message in done.stderr


def test_a_huge_learning_rate_is_a_warning_at_check(tmp_path):
    done = advc("check", QUICKSTART, "--set", "train.optim=sgd(lr = 1e6, momentum = 0.9)", cwd=tmp_path)
    assert done.returncode == 0
    assert "--set#1:1:22: warning[large-lr]: a learning rate of 1000000 rarely trains anything" in done.stderr
    done = advc("check", QUICKSTART, "--set", "train.optim=sgd(lr = 1e6, momentum = 0.9)", "--strict", cwd=tmp_path)
    assert done.returncode == 2


def _epoch(epoch: int, loss: float, accuracy: float) -> dict:
    return {"epoch": epoch, "loss": loss, "train_natural": accuracy}


def test_divergence_is_a_loss_far_above_the_first_epochs_or_accuracy_stuck_at_chance():
    from advc.runtime.loop import divergence

    assert divergence([_epoch(0, 2.3, 30.0), _epoch(1, 1.9, 45.0)], 10) is None
    kind, line = divergence([_epoch(0, 2.3, 30.0), _epoch(1, 23.1, 12.0)], 10)
    assert kind == "loss" and line == (
        "warning: the training loss 23.1 at epoch 2 is over 10x its first epoch's 2.3: training is diverging -- "
        "hint: lower the learning rate, or check the weight and loss expressions")  # fmt: skip
    stuck = [_epoch(0, 2.3, 11.0), _epoch(1, 2.31, 9.5), _epoch(2, 2.30, 10.2)]
    kind, line = divergence(stuck, 10)
    assert kind == "chance" and line == (
        "warning: the training accuracy has stayed at chance (10.2%, 10 classes) for 3 epochs with a finite loss: "
        "the model is not learning -- hint: lower the learning rate, or check the data and the weights")  # fmt: skip
    assert divergence(stuck[:2], 10) is None  # not yet several epochs
    assert divergence(stuck, None) is None  # chance unknown: no claim
    assert divergence([*stuck[:2], _epoch(2, 2.3, 16.0)], 10) is None  # above 1.5x chance
    assert divergence([_epoch(0, 0.7, 55.0), _epoch(1, 0.6, 65.0), _epoch(2, 0.5, 75.0)], 2) is None  # 2 classes


def test_a_diverging_run_prints_one_warning_line_and_goes_on(tmp_path):
    out = tmp_path / "run"
    done = advc("run", QUICKSTART, "--set", "train.epochs=2", "--set", "train.optim=adam(lr = piecewise(0: 0.001, 1: 1))",
                "--no-eval", "--quiet", "--out", out, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert re.fullmatch(r"warning: the training loss \S+ at epoch 2 is over 10x its first epoch's \S+: training is "
                        r"diverging -- hint: lower the learning rate, or check the weight and loss expressions",
                        warnings[0]), warnings  # fmt: skip
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
