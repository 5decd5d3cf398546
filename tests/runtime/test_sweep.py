"""`advc sweep`: a grid of runs in one command -- checked up front, named from what varies,
N at a time, and finished by a rerun after Ctrl-C or a crash.

Most laws are shown with a stand-in for `advc run` (a few lines of Python that write what a
finished run writes, or fail), so they cost milliseconds; the end-to-end test runs the real
`advc run` on digits, stops the sweep half-way and reruns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advc.errors import AdvcError, UserError
from advc.runtime import sweep as sw
from advc.runtime.results import merge_runs, write_results

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"

# A madry-style (min-max, every sample takes all steps) variant of the quickstart, small enough
# that a run is mostly advc's start-up time.
MADRY_DIGITS = """\
objective digits_madry {
    threat  linf(eps = 0.1)
    attack  pgd(steps = 5, step_size = 0.025, init = uniform, loss = ce)
    form    minmax
    loss    ce(adv)
}

train {
    data    digits(test = 0.9)
    model   small_cnn
    epochs  2
    batch   64
    seed    0
    optim   sgd(lr = 0.05, momentum = 0.9)
    val     0.1
    augment false
}

evaluate {
    natural
    pgd(steps = 5)
}
"""

# Stands in for `advc run` (its argv after "run"): claims the folder (run.json with the argv),
# prints a line, writes results.json -- or fails like advc does when $FAKE_FAIL names an
# existing file and the run's ε is 0.3.
FAKE_RUN = """\
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
out = Path(argv[argv.index("--out") + 1])
sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
print("fake run " + " ".join(sets), flush=True)
if "threat.eps=0.3" in sets and os.path.exists(os.environ.get("FAKE_FAIL", "/nonexistent")):
    print("error: the fake run fails at eps 0.3 (fake.py) -- hint: none", file=sys.stderr, flush=True)
    sys.exit(1)
out.mkdir(parents=True, exist_ok=True)
(out / "run.json").write_text(json.dumps({"format": "advc-run", "argv": argv}))
from advc.runtime.results import write_results
seed = int([s for s in sets if s.startswith("train.seed=")][0].partition("=")[2])
eps = [s for s in sets if s.startswith("threat.eps=")]
write_results(out, "fake" + (eps[0].partition("=")[2] if eps else ""), seed, {"last": {"Natural": 50.0 + seed}}, n=10)
"""


@pytest.fixture
def fake_runs(monkeypatch):
    """Every run the sweep starts is FAKE_RUN with the real `advc run` options."""
    real = sw.run_command
    monkeypatch.setattr(sw, "run_command", lambda opts: [sys.executable, "-c", FAKE_RUN, *real(opts)[4:]])


def advc(*args, cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "advc", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def options(out: Path, **kw) -> sw.SweepOptions:
    kw.setdefault("specs", [QUICKSTART])
    kw.setdefault("seeds", "0")
    kw.setdefault("overrides", ["train.epochs=1"])
    return sw.SweepOptions(out=out, **kw)


def point(objective: str, grid: list[tuple[str, str]], seed: int, spec: str = "a.adv") -> sw.Point:
    return sw.Point(spec=spec, overrides=[f"{k}={v}" for k, v in grid] + [f"train.seed={seed}"], grid=grid,
                    seed=seed, objective=objective)


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# --- the grid ------------------------------------------------------------------------------


def test_grid_values_split_at_commas_outside_brackets():
    assert sw.split_values("0.1, 0.2,8/255") == ["0.1", "0.2", "8/255"]
    assert sw.split_values("gair(fn = tanh, lambda = 0),none") == ["gair(fn = tanh, lambda = 0)", "none"]
    assert sw.split_values('"a,b",c') == ['"a,b"', "c"]


def test_grid_is_the_product_of_specs_values_and_seeds_seeds_outermost():
    grid = sw.parse_grid(["threat.eps=0.1,0.2", "attack.steps=5,10"], ["train.epochs=2"], seeds=True)
    points = sw.expand(["a.adv", "b.adv"], grid, [0, 1], ["train.epochs=2"])
    assert len(points) == 2 * 2 * 2 * 2
    assert points[0].overrides == ["train.epochs=2", "threat.eps=0.1", "attack.steps=5", "train.seed=0"]
    assert [(p.spec, p.seed) for p in points[:8]] == [("a.adv", 0)] * 4 + [("b.adv", 0)] * 4
    assert {p.seed for p in points[8:]} == {1}
    assert len({(p.spec, tuple(p.overrides)) for p in points}) == len(points)
    # no --seeds: each spec's own seed, no train.seed override
    assert sw.expand(["a.adv"], grid, None, [])[0].overrides == ["threat.eps=0.1", "attack.steps=5"]


@pytest.mark.parametrize(("grid", "overrides", "message"), [
    (["threat.eps"], [], "error: a --grid option needs KEY=V1,V2,... (--grid threat.eps) -- hint: e.g. --grid threat.eps=0.1,0.2"),
    (["threat.eps=0.1,,0.2"], [], "error: empty value in --grid (--grid threat.eps=0.1,,0.2) -- hint: separate the values by single commas"),
    (["threat.eps=0.1,0.1"], [], "error: the value 0.1 is given twice (--grid threat.eps=0.1,0.1) -- hint: give each value once"),
    (["train.seed=0,1"], [], "error: the seeds have their own option (--grid train.seed=0,1) -- hint: use --seeds 0,1"),
    (["threat.eps=0.1", "threat.eps=0.2"], [], "error: --grid threat.eps is given twice (--grid threat.eps=0.2) -- hint: list all its values in one --grid"),
    (["threat.eps=0.1,0.2"], ["threat.eps=0.3"], "error: threat.eps is both in --set and in --grid (--grid threat.eps=0.1,0.2) -- hint: --set fixes a value for every run; drop it or the --grid"),
    ([], ["train.seed=3"], "error: train.seed is both in --set and --seeds (--set train.seed) -- hint: drop one of them"),
])  # fmt: skip
def test_malformed_grid_options_are_one_line(grid, overrides, message):
    with pytest.raises(UserError) as err:
        sw.parse_grid(grid, overrides, seeds=True)
    assert err.value.render() == message


def test_seeds_are_distinct_whole_numbers():
    assert sw.parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(UserError) as err:
        sw.parse_seeds("0,x")
    assert err.value.render() == "error: a seed must be a whole number >= 0, got 'x' (--seeds 0,x) -- hint: e.g. --seeds 0,1,2"
    with pytest.raises(UserError) as err:
        sw.parse_seeds("1,1")
    assert err.value.render() == "error: seed 1 is given twice (--seeds 1,1) -- hint: give each seed once"


# --- run folder names ----------------------------------------------------------------------


def test_folder_names_say_the_objective_the_values_that_vary_and_the_seed():
    grid = [("threat.eps", ["0.1", "0.2"]), ("attack.steps", ["10"]), ("form", ["minmax", "minmin(tau = 2)"])]
    points = [point("fat", [("threat.eps", e), ("attack.steps", "10"), ("form", f)], s)
              for e in ("0.1", "0.2") for f in ("minmax", "minmin(tau = 2)") for s in (0, 1)]
    names = sw.folder_names(points, grid)
    assert names[:4] == ["fat-eps0.1-form_minmax-seed0", "fat-eps0.1-form_minmax-seed1",
                         "fat-eps0.1-form_minmin_tau_2-seed0", "fat-eps0.1-form_minmin_tau_2-seed1"]
    assert len(set(names)) == len(names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-") for n in names)


def test_keys_that_end_alike_are_named_in_full():
    grid = [("attack.steps", ["5", "10"]), ("evaluate.steps", ["1", "2"])]
    names = sw.folder_names([point("x", [("attack.steps", "5"), ("evaluate.steps", "2")], 0)], grid)
    assert names == ["x-attack.steps5-evaluate.steps2-seed0"]


def test_colliding_or_overlong_names_get_a_hash_of_their_point():
    grid = [("threat.eps", ["8/255", "8_255", "8_255 "])]
    same_objective = [point("fat", [], 0, spec="a/fat.adv"), point("fat", [], 0, spec="b/fat.adv")]
    assert sw.folder_names(same_objective, []) == [f"fat-seed0-{same_objective[0].digest()}",
                                                   f"fat-seed0-{same_objective[1].digest()}"]
    values = [point("fat", [("threat.eps", "8/255")], 0), point("fat", [("threat.eps", "8_255")], 0)]
    names = sw.folder_names(values, grid)
    assert names[0].startswith("fat-eps8_255-seed0-") and len(set(names)) == 2
    by_case = [point("Fat", [], 0), point("fat", [], 0)]  # one folder on a case-insensitive disk
    assert all(len(n) == len("fat-seed0-") + 8 for n in sw.folder_names(by_case, []))
    long = point("fat", [("form", "minmin(tau = " + "1 + " * 40 + "1)")], 0)
    [name] = sw.folder_names([long], [("form", ["minmax", "x"])])
    assert len(name) <= sw.MAX_NAME and name.endswith("-" + long.digest())
    assert point("fat", [], 0).digest() == point("fat", [], 0).digest()  # stable: reruns find their folders


# --- checked before anything runs ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("grid", "diagnostic"), [
    ("threat.epz=0.1,0.2", "--set#1:1:1: error: 'threat' has no parameter 'epz'\n"
                           "  1 | threat.epz=0.1\n"
                           "    | ^^^^^^^^^^ did you mean 'eps'?\n"
                           "error: no run was started: point 1 of 2 does not check (specs/quickstart.adv "
                           "--set threat.epz=0.1 --set train.seed=0)"),
    ("threat.eps=0.1,5", "--set#1:1:12: error: 'eps' must be >= 0 and <= 1, got 5\n"
                         "  1 | threat.eps=5\n"
                         "    |            ^\n"
                         "error: no run was started: point 2 of 2 does not check (specs/quickstart.adv "
                         "--set threat.eps=5 --set train.seed=0)"),
])  # fmt: skip
def test_a_bad_grid_key_or_value_stops_the_sweep_before_anything_is_written(tmp_path, grid, diagnostic):
    out = tmp_path / "sweep"
    proc = advc("sweep", "specs/quickstart.adv", "--grid", grid, "--seeds", "0", "--out", out)
    assert proc.returncode == 2
    hint = " -- hint: fix the --grid or --set value shown above (--set#N is the point's N-th --set)\n"
    assert proc.stderr == diagnostic + hint
    assert proc.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(("kw", "message"), [
    ({"jobs": 0}, "error: --jobs must be at least 1, got 0 (--jobs)"),
    ({"gpus": -1}, "error: --gpus must be 0 or more, got -1 (--gpus)"),
    ({"gpus": 2, "jobs": 3}, "error: with --gpus N the sweep runs one run per GPU at a time (--jobs 3) -- hint: drop --jobs (multi-GPU runs: advc run --gpus N)"),
    ({"specs": [QUICKSTART, ROOT / "specs" / ".." / "specs" / "quickstart.adv"]}, "error: a spec is given twice (advc sweep) -- hint: name each spec once"),
    ({"eval_n": 0}, "error: --eval-n must be at least 1 (--eval-n)"),
    ({"eval_extra": "pgd(stepz = 3)"}, "--eval:1:5: error: pgd has no parameter 'stepz'\n  1 | pgd(stepz = 3)\n    |     ^^^^^ did you mean 'steps'?"),
])  # fmt: skip
def test_bad_options_stop_the_sweep_before_anything_is_written(tmp_path, kw, message):
    out = tmp_path / "sweep"
    with pytest.raises(AdvcError) as err:
        sw.sweep(options(out, **kw))
    assert err.value.render() == message
    assert not out.exists()


def test_the_sweep_starts_the_advc_run_its_point_describes(tmp_path, monkeypatch):
    import advc.runtime.run
    from advc.cli import app

    opts = options(tmp_path, eval_extra="pgd(steps = 7)", eval_n=40, no_eval=True, trust_code=True,
                   data_root="/data", spec_path=["lib"], allow=["unreachable-schedule"], strict=True)
    p = point("fat", [("threat.eps", "0.2")], 1, spec=str(QUICKSTART))
    want = sw.run_options(p, opts, tmp_path / "fat-eps0.2-seed1", resume=True)
    got = []
    monkeypatch.setattr(advc.runtime.run, "run", lambda o: got.append(o) or 0)
    argv = sw.run_command(want)
    assert argv[:4] == [sys.executable, "-m", "advc", "run"]
    app(argv[3:], standalone_mode=False)
    assert got == [want]


def test_each_run_gets_its_share_of_the_cores_and_its_gpu(monkeypatch):
    monkeypatch.setattr(sw, "cores", lambda: 6)
    env = sw.job_env(1, 2, 0, {"PATH": os.environ["PATH"]})
    assert (env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("3", "3")
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert sw.job_env(0, 8, 0, {})["OMP_NUM_THREADS"] == "1"
    assert sw.job_env(1, 2, 2, {})["CUDA_VISIBLE_DEVICES"] == "1"
    assert sw.job_env(1, 2, 2, {"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"
    # and torch follows OMP_NUM_THREADS (as many as there are cores: torch takes no more)
    monkeypatch.undo()
    env = sw.job_env(0, sw.cores(), 0, {k: v for k, v in os.environ.items() if "NUM_THREADS" not in k})
    torch_threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert torch_threads == env["OMP_NUM_THREADS"] == "1"


# --- reruns, failures, the sweep record ----------------------------------------------------


def test_a_failing_run_does_not_stop_the_others_and_a_rerun_finishes_it(tmp_path, fake_runs, monkeypatch, capsys):
    marker = tmp_path / "fail"
    marker.touch()
    monkeypatch.setenv("FAKE_FAIL", str(marker))
    out = tmp_path / "sweep"
    opts = options(out, grid=["threat.eps=0.1,0.3,0.2"], jobs=2)
    assert sw.sweep(opts) == 1
    err = capsys.readouterr().err
    failed = out / "quickstart-eps0.3-seed0"
    line = (f"failed: quickstart-eps0.3-seed0: error: the fake run fails at eps 0.3 (fake.py) -- hint: none "
            f"(log: {failed / 'run.log'})")
    assert line in err.splitlines()
    assert f"sweep {out}: 2 of 3 runs complete (2 now), 1 failed, in " in err
    for name in ("quickstart-eps0.1-seed0", "quickstart-eps0.2-seed0"):
        assert (out / name / "results.json").is_file()
    assert [p.name for p in failed.iterdir()] == ["run.log"]  # its output, and nothing else
    assert "error: the fake run fails at eps 0.3" in (failed / "run.log").read_text()

    kept = {n: fingerprint(out / n / "results.json") for n in ("quickstart-eps0.1-seed0", "quickstart-eps0.2-seed0")}
    marker.unlink()
    assert sw.sweep(opts) == 0
    err = capsys.readouterr().err
    assert f"sweep {out}: 3 runs; 2 complete, 0 to resume, 1 to start; 2 at a time" in err
    assert {n: fingerprint(out / n / "results.json") for n in kept} == kept
    log = (failed / "run.log").read_text()
    assert log.count("--- advc sweep, ") == 2 and "error: the fake run fails" in log  # both attempts
    assert (failed / "results.json").is_file()


def test_a_rerun_skips_complete_runs_resumes_interrupted_ones_and_restarts_the_rest(tmp_path, fake_runs, capsys):
    out = tmp_path / "sweep"
    opts = options(out, grid=["threat.eps=0.1,0.2,0.3"])
    assert sw.sweep(opts) == 0
    complete, interrupted, lost = (out / f"quickstart-eps{e}-seed0" for e in ("0.1", "0.2", "0.3"))
    (interrupted / "results.json").unlink()  # killed after its last checkpoint
    (interrupted / "checkpoints").mkdir()
    (interrupted / "checkpoints" / "last.safetensors").write_bytes(b"weights")
    (lost / "results.json").unlink()  # killed before its first checkpoint
    kept = fingerprint(complete / "results.json")
    capsys.readouterr()
    assert sw.sweep(opts) == 0
    assert "3 runs; 1 complete, 1 to resume, 1 to start" in capsys.readouterr().err
    assert fingerprint(complete / "results.json") == kept
    assert "--resume" in json.loads((interrupted / "run.json").read_text())["argv"]
    assert "--resume" not in json.loads((lost / "run.json").read_text())["argv"]


def test_a_no_eval_run_is_complete_when_its_last_checkpoint_is_the_final_epoch(tmp_path):
    import torch

    from advc.runtime.checkpoint import save_checkpoint

    p = point("fat", [], 0)
    p.epochs = 3
    folder = tmp_path / "run"
    last = folder / "checkpoints" / "last.safetensors"
    assert sw.point_state(folder, p, no_eval=True) == "fresh"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")
    assert sw.point_state(folder, p, no_eval=True) == "resume"  # (advc run --resume says what is wrong)
    for epoch, state in ((1, "resume"), (2, "complete")):
        save_checkpoint(last, model_state={"w": torch.zeros(2)}, optimizer_state=None, extra={"epoch": epoch})
        assert sw.point_state(folder, p, no_eval=True) == state
    assert sw.point_state(folder, p, no_eval=False) == "resume"  # with evaluation: results.json decides
    write_results(folder, "fat", 0, {"last": {"Natural": 90.0}}, n=10)
    assert sw.point_state(folder, p, no_eval=False) == "complete"


def test_a_sweep_folder_of_another_grid_is_refused(tmp_path, fake_runs, capsys):
    out = tmp_path / "sweep"
    assert sw.sweep(options(out, grid=["threat.eps=0.1,0.2"])) == 0
    record = (out / "sweep.json").read_text()
    with pytest.raises(UserError) as err:
        sw.sweep(options(out, grid=["threat.eps=0.1,0.3"]))
    assert err.value.render() == (
        'error: the folder holds another sweep: its grid differs ({"threat.eps": ["0.1", "0.2"]} there, '
        f'{{"threat.eps": ["0.1", "0.3"]}} now) ({out / "sweep.json"}) -- hint: --out another folder, '
        "or repeat that sweep's own command")
    assert (out / "sweep.json").read_text() == record
    assert sorted(p.name for p in out.iterdir()) == [".advc.lock", "quickstart-eps0.1-seed0",
                                                     "quickstart-eps0.2-seed0", "sweep.json"]
    data = json.loads(record)
    assert data["grid"] == {"threat.eps": ["0.1", "0.2"]} and data["seeds"] == [0]
    assert data["points"][1] == {"folder": "quickstart-eps0.2-seed0", "spec": str(QUICKSTART),
                                 "overrides": ["train.epochs=1", "threat.eps=0.2", "train.seed=0"]}


def test_a_folder_that_is_not_a_sweep_or_holds_other_runs_is_refused(tmp_path, fake_runs, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        sw.sweep(options(other))
    assert err.value.render() == (f"error: --out holds files but no sweep.json: it is not an advc sweep folder; "
                                  f"nothing was changed ({other}) -- hint: name a new or empty folder for the sweep")
    out = tmp_path / "sweep"
    assert sw.sweep(options(out)) == 0
    run_json = out / "quickstart-seed0" / "run.json"
    run_json.write_text(json.dumps({"format": "advc-run", "training_id": "0" * 64}))  # the spec changed since
    with pytest.raises(UserError) as err:
        sw.sweep(options(out))
    assert err.value.render() == ("error: the run folder holds a run of other settings (did the spec change "
                                  f"since?) ({out / 'quickstart-seed0'}) -- hint: --out another folder for the "
                                  "new settings")


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_run_behind(tmp_path):
    """kill -9 of the sweep: its runs get SIGTERM (no orphan keeps training and holding its folder)."""
    out = tmp_path / "sweep"
    script = f"""
import sys
from pathlib import Path
import advc.runtime.sweep as sw
sleeper = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
sw.run_command = lambda opts: [sys.executable, "-c", sleeper, str(opts.out) + ".pid"]
sw.sweep(sw.SweepOptions(specs=[Path({str(QUICKSTART)!r})], out=Path({str(out)!r}), seeds="0"))
"""
    sweep = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    pid_file = out / "quickstart-seed0.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    run_pid = int(pid_file.read_text())
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 10
    while _alive(run_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(run_pid)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie is dead, waiting for its parent


@pytest.mark.slow
def test_sweep_help_lists_its_options():
    proc = advc("sweep", "--help")
    assert proc.returncode == 0
    for option in ("--grid", "--seeds", "--out", "--jobs", "--gpus", "--set", "--eval", "--eval-n", "--no-eval",
                   "--trust-code", "--data-root", "--spec-path", "--allow", "--strict", "--quiet"):
        assert option in proc.stdout, option


# --- end to end ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_on_digits_stopped_half_way_and_rerun_finishes_only_what_was_missing(tmp_path):
    madry = tmp_path / "madry_digits.adv"
    madry.write_text(MADRY_DIGITS)
    out = tmp_path / "eps_sweep"
    args = ["sweep", "specs/quickstart.adv", madry, "--grid", "threat.eps=0.1,0.2", "--seeds", "0,1",
            "--set", "train.epochs=2", "--set", "train.data=digits(test = 0.9)",
            "--set", "evaluate=natural pgd(steps = 5)", "--eval-n", "50", "--jobs", "2", "--out", out]
    names = [f"{o}-eps{e}-seed{s}" for s in (0, 1) for o in ("quickstart", "digits_madry") for e in ("0.1", "0.2")]
    folders = [out / n for n in names]

    def complete():
        return [f for f in folders if (f / "results.json").is_file()]

    def between():  # a run that has a checkpoint but no results yet
        return [f for f in folders if (f / "checkpoints" / "last.safetensors").is_file()
                and not (f / "results.json").is_file()]

    # 1. Ctrl-C once a run is complete and another one is between its checkpoint and its results
    t0 = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "advc", *map(str, args)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (complete() and between()):
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() - t0 < 400, "no run reached its checkpoint"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    t1 = time.monotonic()
    assert first.returncode == 130, stderr
    assert "interrupted: stopping" in stderr
    assert "their folders are kept; rerun the same command to continue: advc sweep specs/quickstart.adv" in stderr
    assert "Traceback" not in stderr + stdout
    kept = {f: fingerprint(f / "results.json") for f in complete()}
    resumable = between()
    assert 1 <= len(kept) < len(names) and resumable
    assert not any((f / ".advc.lock").exists() and _locked(f) for f in folders)

    # 2. the same command again: only what was missing runs
    second = advc(*args)
    t2 = time.monotonic()
    assert second.returncode == 0, second.stderr
    fresh = len(names) - len(kept) - len(resumable)
    assert (f"{len(names)} runs; {len(kept)} complete, {len(resumable)} to resume, {fresh} to start"
            in second.stderr)
    assert {f: fingerprint(f / "results.json") for f in kept} == kept
    assert complete() == folders
    for f in resumable:
        history = json.loads((f / "run.json").read_text())["history"]
        assert [h["resume"] for h in history] == [False, True]
        assert (f / "run.log").read_text().count("--- advc sweep, ") == 2
    for name in names:
        assert f"start  {name}" in second.stderr or out / name in kept
    try:
        summary = merge_runs(folders)
    except UserError as err:
        assert err.render() in second.stderr.splitlines()
    else:
        assert summary in second.stdout
    record = json.loads((out / "sweep.json").read_text())
    assert [p["folder"] for p in record["points"]] == names

    # 3. and once more: nothing left to do
    third = advc(*args)
    assert third.returncode == 0, third.stderr
    assert f"{len(names)} runs; {len(names)} complete, 0 to resume, 0 to start" in third.stderr
    assert "start  " not in third.stderr
    print(f"\nsweep timings: stopped after {t1 - t0:.1f}s, rerun {t2 - t1:.1f}s, "
          f"complete rerun {time.monotonic() - t2:.1f}s\n{second.stderr}\n{second.stdout}")


def _locked(folder: Path) -> bool:
    """Whether some process holds the run folder's lock."""
    import fcntl

    with open(folder / ".advc.lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
