"""Fuzzer of advc run folders (a script, not a pytest module).

    python tests/fuzz/fuzz_runfolder.py --cases 2000 [--seed 0] [--json report.json]

A run folder is data someone else may have written: ``advc eval RUN`` and ``advc run --resume``
must read it without running any code it names, and either refuse an edited folder with one
line or give exactly the numbers of the untouched one. The fuzzer trains one real run folder
(``specs/quickstart.adv``, one epoch, ``evaluate natural pgd(steps = 3)``, ``--eval-n 40``),
evaluates it once for reference, then per case copies it and changes one thing:

- ``run.json``: a field removed or retyped, file paths with ``..`` or outside ``spec/``, huge
  strings, other overrides (eps, model, the evaluate list), the experiment record edited;
- ``resolved.json``: edited, garbage or removed (advc never reads it);
- the spec copy in ``spec/``: random bytes, or edits that keep it parsing (eps, the model, the
  evaluate list, a comment, an ``extends`` of a file outside the folder);
- a checkpoint's JSON header, the digest recomputed (``resign``): values retyped, keys removed,
  epochs out of range, tensor placeholders renamed, training identity changed;
- a checkpoint's tensors, the digest recomputed: shapes, dtypes, NaN/inf, tensors missing or
  added; or its bytes without a new digest;
- any file truncated or emptied; a file replaced by a symlink (to ``/dev/zero``, to a file
  outside the folder); ``evaluations/`` and ``metrics.jsonl`` mangled;
- a canary module (it writes a file when imported) named as the model in the spec copy,
  ``run.json`` or ``resolved.json``, or ``objective.py`` replaced by a canary script.

Then ``advc eval RUN --n 40 --no-sanity`` runs on it (in-process through ``advc.cli.main``,
catching ``SystemExit``; every ``--subprocess-every``-th case through ``python -m advc``), and for
cases that touch what a resume reads, ``advc run specs/quickstart.adv --resume`` (the run's
overrides, ``train.epochs=1``: the checkpoint's epoch is the last, so the resume evaluates).

Counted: *tracebacks* (any exception but ``SystemExit`` out of ``main``, or ``Traceback`` in a
subprocess's output); *canary executions* (the canary file appeared or the module was
imported); *changed numbers* (an accepted case whose table -- header, columns, rows -- differs
from the untouched folder's; a table with fewer checkpoints is counted apart); *refusals that
changed the folder* (a non-zero exit must leave every file as it was); *multi-line errors*
(more than one ``error:`` line); *hangs* (a case over ``--case-timeout``). Exit status 0 only
when all of these are 0.

``tests/fuzz/test_fuzz_smoke.py`` runs ~150 cases of this in the test suite;
``tests/runtime/test_hostile.py`` uses ``resign`` to forge checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
EVALUATE = "natural pgd(steps = 3)"
N = 40
TRAIN = ["--set", "train.epochs=1", "--set", f"evaluate={EVALUATE}"]
EVAL_ARGS = ["--n", str(N), "--no-sanity"]
CANARY = "advc_fuzz_canary"
STRATEGIES = [
    "run_json_remove", "run_json_retype", "run_json_path", "run_json_huge", "run_json_override",
    "run_json_experiment", "resolved_json", "spec_bytes", "spec_edit", "ckpt_json", "ckpt_epoch",
    "ckpt_placeholder", "ckpt_tensor", "ckpt_bytes", "truncate", "symlink", "evaluations",
    "metrics", "canary",
]  # fmt: skip
# strategies whose mutation a resume reads (the rest only matter to advc eval)
RESUME_STRATEGIES = {"ckpt_json", "ckpt_epoch", "ckpt_placeholder", "ckpt_tensor", "ckpt_bytes", "truncate",
                     "symlink", "metrics", "canary"}  # fmt: skip
ODD_VALUES = [None, True, False, 0, -1, 1.5, 10**9, 10**30, -1e308, "abc", "", [], {}, [1, 2], {"a": 1},
              {"__tensor__": "model.nothing"}, "x" * 5000]  # fmt: skip


# --------------------------------------------------------------------------------------------
# forging checkpoints: edit the JSON header or the tensors, then recompute the digest


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """The JSON state (the ``advc`` header entry, decoded) and the raw tensors of a checkpoint."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    return json.loads(metadata["advc"]), tensors


def resign(path: Path, edit_state=None, edit_tensors=None) -> None:
    """Rewrite the checkpoint at ``path`` after ``edit_state(state)`` / ``edit_tensors(tensors)``
    (each edits in place, or returns a replacement), with the sha256 recomputed as advc's own
    writer computes it: a forgery that the checksum alone cannot tell from a real checkpoint."""
    from safetensors.torch import save

    from advc.runtime.checkpoint import _digest

    state, tensors = read_checkpoint(path)
    if edit_state is not None:
        state = edit_state(state) or state
    if edit_tensors is not None:
        tensors = edit_tensors(tensors) or tensors
    state_json = json.dumps(state, separators=(",", ":"))
    tensors = {k: t.contiguous() for k, t in tensors.items()}
    path.write_bytes(save(tensors, metadata={"advc": state_json, "advc_sha256": _digest(state_json, tensors)}))


# --------------------------------------------------------------------------------------------
# JSON paths


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _parent(obj, path):
    for key in path[:-1]:
        obj = obj[key]
    return obj


def _retype(rng: random.Random, obj, avoid=()) -> str:
    paths = [p for p in _paths(obj) if p and p[0] not in avoid]
    path = rng.choice(paths)
    value = rng.choice(ODD_VALUES)
    _parent(obj, path)[path[-1]] = value
    return f"{'.'.join(map(str, path))} = {json.dumps(value)[:40]}"


def _remove(rng: random.Random, obj, avoid=()) -> str:
    paths = [p for p in _paths(obj) if p and p[0] not in avoid]
    path = rng.choice(paths)
    del _parent(obj, path)[path[-1]]
    return f"del {'.'.join(map(str, path))}"


def _edit_json(path: Path, edit) -> str:
    data = json.loads(path.read_text(encoding="utf-8"))
    what = edit(data)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return what


# --------------------------------------------------------------------------------------------
# mutations: each changes one thing in the folder ``d`` and says what


@dataclass
class Context:
    canary_file: Path  # appears when the canary module runs
    outside_spec: Path  # a spec file outside every run folder


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and not p.is_symlink())


def _spec_copy(d: Path) -> Path:
    return d / "spec" / "quickstart.adv"


def _ckpt(rng: random.Random, d: Path) -> Path:
    return d / "checkpoints" / f"{rng.choice(['best', 'last'])}.safetensors"


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    kind = rng.choice(["flip", "delete", "insert", "truncate", "duplicate"])
    if not data:
        return b"\x00"
    i = rng.randrange(len(data))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if kind == "delete":
        return data[:i] + data[i + rng.randint(1, 16) :]
    if kind == "insert":
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]
    if kind == "truncate":
        return data[:i]
    return data[:i] + data[i : i + 64] * 2 + data[i + 64 :]


SPEC_EDITS = [
    ("eps = 0.1", "eps = 0.0"), ("eps = 0.1", "eps = 0.2"), ("eps = 0.1", "eps = 0.1000001"),
    ("small_cnn", f'"{CANARY}:make"'), ("small_cnn", "preact_resnet18"), ("seed    0", "seed    1"),
    ("steps = 10", "steps = 3"), ("epochs  15", "epochs  3"), ("natural\n", "# natural\n"),
    ("pgd(steps = 20)", "pgd(steps = 20, step_size = 0.0001)"), ("batch   64", "batch   32"),
    ("lambda = 0", "lambda = 1"), ("objective quickstart {", "# a comment\nobjective quickstart {"),
    ("objective quickstart {", "objective quickstart extends \"OUTSIDE\" {"),
    ("    loss    ce(adv) * weight", "    loss    ce(adv) * weight  # same loss"),
]  # fmt: skip
OVERRIDES = [
    "threat.eps=0", "threat.eps=0.05", "train.epochs=2", "train.epochs=1", "evaluate=natural",
    "evaluate=natural pgd(steps = 3, step_size = 0.0001)", f'train.model="{CANARY}:make"',
    "attack.steps=3", "weight=margin", "=", "x", "train.seed=1", "evaluate=" + EVALUATE, "train.val=0.2",
]  # fmt: skip


def mutate(rng: random.Random, d: Path, strategy: str, ctx: Context) -> tuple[str, bool]:
    """Apply one mutation of ``strategy`` to the run folder ``d``: (what was done, trust code?)."""
    run_json, spec = d / "run.json", _spec_copy(d)
    trust = False
    if strategy == "run_json_remove":
        what = _edit_json(run_json, lambda r: _remove(rng, r))
    elif strategy == "run_json_retype":
        what = _edit_json(run_json, lambda r: _retype(rng, r))
    elif strategy == "run_json_path":
        value = rng.choice(["spec/../run.json", "../base/spec/quickstart.adv", "/etc/passwd", str(ctx.outside_spec),
                            "spec/missing.adv", "", "spec", "spec/./quickstart.adv", "spec/../spec/quickstart.adv",
                            "checkpoints/last.safetensors", "specs/madry.adv", str(QUICKSTART)])  # fmt: skip
        field_ = rng.choice(["entry", "copy", "path"])

        def edit(r):
            if field_ == "entry":
                r["entry"] = value
            else:
                r["files"][0][field_] = value
            return f"{field_} = {value!r}"

        what = _edit_json(run_json, edit)
    elif strategy == "run_json_huge":
        size = rng.choice([10_000, 1_000_000, 3_000_000])

        def edit(r):
            strings = [p for p in _paths(r) if p and isinstance(_parent(r, p)[p[-1]], str)]
            path = rng.choice(strings)
            _parent(r, path)[path[-1]] = rng.choice("x/.é\\\n") * size
            return f"{'.'.join(map(str, path))} = {size} characters"

        what = _edit_json(run_json, edit)
    elif strategy == "run_json_override":

        def edit(r):
            how = rng.choice(["add", "replace", "clear"])
            new = rng.choice(OVERRIDES)
            if how == "add":
                r["overrides"].append(new)
            elif how == "replace":
                r["overrides"][rng.randrange(len(r["overrides"]))] = new
            else:
                r["overrides"] = []
            return f"overrides {how} {new!r}"

        what = _edit_json(run_json, edit)
    elif strategy == "run_json_experiment":
        key, value = rng.choice([("threat.eps", 0.0), ("train.model", f"{CANARY}:make"), ("evaluate", "Natural"),
                                 ("eval.n", 5), ("train.epochs", 100), ("eval.eps", 0.0)])  # fmt: skip
        target = rng.choice(["experiment", "training_id", "experiment_id", "spec_hash"])

        def edit(r):
            if target == "experiment":
                r["experiment"][key] = value
                return f"experiment[{key}] = {value!r}"
            r[target] = hashlib.sha256(b"forged").hexdigest()[: len(r[target])]
            return f"{target} forged"

        what = _edit_json(run_json, edit)
    elif strategy == "resolved_json":
        path = d / "resolved.json"
        how = rng.choice(["retype", "garbage", "remove", "model"])
        if how == "garbage":
            path.write_bytes(os.urandom(200))
        elif how == "remove":
            path.unlink()
        elif how == "model":
            _edit_json(path, lambda r: r["settings"].update({"train.model": f"{CANARY}:make", "threat.eps": 0.0}))
        else:
            _edit_json(path, lambda r: _retype(rng, r))
        what = f"resolved.json {how}"
    elif strategy == "spec_bytes":
        spec.write_bytes(_mutate_bytes(rng, spec.read_bytes()))
        what = "spec copy bytes"
    elif strategy == "spec_edit":
        old, new = rng.choice(SPEC_EDITS)
        new = new.replace("OUTSIDE", str(ctx.outside_spec))
        spec.write_text(spec.read_text().replace(old, new, 1))
        trust = "CANARY" in new or CANARY in new
        what = f"spec copy: {old!r} -> {new!r}"
    elif strategy == "ckpt_json":
        path = _ckpt(rng, d)
        how = rng.choice(["retype", "remove"])
        avoid = ("model", "optim", "rng", "rng_state") if rng.random() < 0.7 else ()
        edit = (lambda s: _retype(rng, s, avoid)) if how == "retype" else (lambda s: _remove(rng, s, avoid))
        said = []
        resign(path, edit_state=lambda s: said.append(edit(s)))
        what = f"{path.name} header {said[0]}"
    elif strategy == "ckpt_epoch":
        path = _ckpt(rng, d)
        key = rng.choice(["epoch", "best_epoch", "best_metric", "training_id", "epochs", "seed"])
        values = [-1, 0, 1, 2, 10**7, 10**9, "abc", 0.5, True, None, -1e308, 101.0, float("inf"), float("nan"),
                  "0" * 64]  # fmt: skip
        said = []

        def edit(s):
            current = json.dumps(s["extra"].get(key))
            value = rng.choice([v for v in values if json.dumps(v) != current])  # never the value it holds
            s["extra"][key] = value
            said.append(repr(value))

        resign(path, edit_state=edit)
        what = f"{path.name} extra.{key} = {said[0]}"
    elif strategy == "ckpt_placeholder":
        path = _ckpt(rng, d)
        said = []

        def edit(s):
            holders = [p for p in _paths(s) if p and isinstance(_parent(s, p)[p[-1]], dict)
                       and set(_parent(s, p)[p[-1]]) == {"__tensor__"}]  # fmt: skip
            p = rng.choice(holders)
            own = _parent(s, p)[p[-1]]["__tensor__"]
            names = [_parent(s, q)[q[-1]]["__tensor__"] for q in holders]
            new = rng.choice([n for n in [*names, "model.missing", str(p[-1])] if n != own])
            _parent(s, p)[p[-1]]["__tensor__"] = new
            said.append(f"{'.'.join(map(str, p))} -> {new}")

        resign(path, edit_state=edit)
        what = f"{path.name} placeholder {said[0]}"
    elif strategy == "ckpt_tensor":
        import torch

        path = _ckpt(rng, d)
        how = rng.choice(["shape", "dtype", "nan", "inf", "missing", "extra", "scalar"])
        prefix = rng.choice(["model.", "model.", "optim.", "rng."])
        said = []

        def edit(tensors):
            keys = sorted(k for k in tensors if k.startswith(prefix)) or sorted(tensors)
            if how in ("nan", "inf"):
                keys = [k for k in keys if tensors[k].is_floating_point()] or ["model.features.0.weight"]
            k = rng.choice(keys)
            t = tensors[k]
            if how == "shape":
                tensors[k] = t.reshape(-1) if t.dim() != 1 else torch.cat([t, t[:1]])
            elif how == "dtype":
                tensors[k] = t.to(rng.choice([torch.float16, torch.float64, torch.int32, torch.bfloat16]))
            elif how in ("nan", "inf"):
                t = t.clone()
                t.view(-1)[rng.randrange(t.numel())] = float(how)
                tensors[k] = t
            elif how == "missing":
                del tensors[k]
            elif how == "extra":
                tensors[k + ".extra"] = torch.zeros(3)
            else:
                tensors[k] = torch.tensor(1.0)
            said.append(f"{k} {how}")

        resign(path, edit_tensors=edit)
        what = f"{path.name} tensor {said[0]}"
    elif strategy == "ckpt_bytes":
        path = _ckpt(rng, d)
        path.write_bytes(_mutate_bytes(rng, path.read_bytes()))
        what = f"{path.name} bytes"
    elif strategy == "truncate":
        path = rng.choice(_files(d))
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data) + 1)] if data and rng.random() < 0.7 else b"")
        what = f"truncated {path.relative_to(d)}"
    elif strategy == "symlink":
        path = rng.choice([d / "run.json", _spec_copy(d), d / "checkpoints" / "last.safetensors",
                           d / "checkpoints" / "best.safetensors", d / "metrics.jsonl", d / "spec"])  # fmt: skip
        target = rng.choice(["/dev/zero", str(ctx.outside_spec), "/etc/passwd", "loop", "/nonexistent"])
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        path.symlink_to(path if target == "loop" else target)
        what = f"{path.relative_to(d)} -> {target}"
    elif strategy == "evaluations":
        folder = d / "evaluations"
        how = rng.choice(["garbage", "retype", "file", "remove", "folder"])
        kept = sorted(folder.glob("*.json"))
        if how == "garbage":
            rng.choice(kept).write_bytes(os.urandom(100))
        elif how == "retype":
            _edit_json(rng.choice(kept), lambda r: _retype(rng, r))
        elif how == "file":
            shutil.rmtree(folder)
            folder.write_text("not a folder\n")
        elif how == "remove":
            shutil.rmtree(folder)
        else:
            (folder / "x.json").mkdir()
        what = f"evaluations {how}"
    elif strategy == "metrics":
        path = d / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        how = rng.choice(["retype", "garbage", "list", "epoch"])
        if how == "retype":
            _retype(rng, rows)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif how == "garbage":
            path.write_bytes(path.read_bytes() + os.urandom(50) + b"\n")
        elif how == "list":
            path.write_text("[1, 2]\n\"x\"\n" + path.read_text())
        else:
            rows[0]["epoch"] = rng.choice(["abc", 1.5, None, -3, 10**30, [0]])
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        what = f"metrics.jsonl {how}"
    elif strategy == "canary":
        where = rng.choice(["spec", "run.json override", "experiment", "resolved.json", "objective.py"])
        model = f'"{CANARY}:make"'
        if where == "spec":
            spec.write_text(spec.read_text().replace("small_cnn", model, 1))
        elif where == "run.json override":
            _edit_json(run_json, lambda r: r["overrides"].append(f"train.model={model}"))
        elif where == "experiment":
            _edit_json(run_json, lambda r: r["experiment"].update({"train.model": f"{CANARY}:make"}))
        elif where == "resolved.json":
            _edit_json(d / "resolved.json", lambda r: r["settings"].update({"train.model": f"{CANARY}:make"}))
        else:
            (d / "objective.py").write_text(f"import pathlib\npathlib.Path({str(ctx.canary_file)!r}).write_text('ran')\n")
        trust = rng.random() < 0.5  # even when the user trusts code, an edited folder runs none
        what = f"canary model in {where}" + (" (--trust-code)" if trust else "")
    else:  # pragma: no cover
        raise ValueError(strategy)
    return what, trust


# --------------------------------------------------------------------------------------------
# running advc on a folder


class _Hang(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Hang


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    traceback: str | None = None
    hang: bool = False
    seconds: float = 0.0


def run_in_process(argv: list[str], timeout: float) -> Outcome:
    """``advc ARGV`` through ``advc.cli.main`` in this process (output captured)."""
    from advc.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, code, tb, hang = sys.argv, 0, None, False
    sys.argv = ["advc", *argv]
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Hang:
        hang, code = True, -1
    except BaseException:
        tb, code = traceback.format_exc(limit=-6), -1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        sys.argv = old_argv
    return Outcome(code, out.getvalue(), err.getvalue(), tb, hang, time.perf_counter() - t0)


def run_subprocess(argv: list[str], timeout: float, env: dict) -> Outcome:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "advc", *argv], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return Outcome(-1, "", "", None, True, time.perf_counter() - t0)
    both = proc.stdout + proc.stderr
    tb = both if "Traceback" in both else None
    return Outcome(proc.returncode, proc.stdout, proc.stderr, tb, False, time.perf_counter() - t0)


def eval_table(stdout: str) -> list[str]:
    """What ``advc eval`` reports: the header line and the table (progress lines carry timings)."""
    return [line for line in stdout.splitlines() if line.startswith("|") or "test accuracy (%)" in line]


def resume_table(d: Path):
    try:
        return json.loads((d / "results.json").read_text())["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` without following links: file hashes, link targets, folders."""
    out = {}
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            p = Path(top) / name
            st = p.lstat()
            rel = str(p.relative_to(folder))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(st.st_mode) else "other"
    return out


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error")]


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class Stats:
    cases: int = 0
    evals: int = 0
    resumes: int = 0
    subprocesses: int = 0
    accepted: int = 0
    accepted_fewer_checkpoints: int = 0
    refused: int = 0
    resume_accepted: int = 0
    resume_refused: int = 0
    tracebacks: int = 0
    canary_runs: int = 0
    changed_numbers: int = 0
    changed_folders: int = 0
    multi_line_errors: int = 0
    silent_refusals: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    slowest_case: str = ""
    seconds: float = 0.0
    by_strategy: Counter = field(default_factory=Counter)
    accepted_by_strategy: Counter = field(default_factory=Counter)
    first_errors: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)

    @property
    def failed(self) -> int:
        return (self.tracebacks + self.canary_runs + self.changed_numbers + self.changed_folders
                + self.multi_line_errors + self.silent_refusals + self.hangs)  # fmt: skip

    def as_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not isinstance(v, (Counter, list))}
        out["slowest_s"] = round(self.slowest_s, 3)
        out["seconds"] = round(self.seconds, 1)
        out["by_strategy"] = dict(sorted(self.by_strategy.items()))
        out["accepted_by_strategy"] = dict(sorted(self.accepted_by_strategy.items()))
        out["first_errors"] = dict(self.first_errors.most_common(40))
        out["failures"] = self.failures[:30]
        return out


def train_base(folder: Path) -> Path:
    """One real run folder: quickstart for one epoch, cheap evaluation (about 10 s)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "advc", "run", "specs/quickstart.adv", *TRAIN, "--eval-n", str(N),
                           "--quiet", "--out", str(folder)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"training the base run folder failed:\n{proc.stderr}")
    return folder


class Fuzzer:
    def __init__(self, work: Path, base: Path, case_timeout: float = 120.0):
        self.work, self.base, self.case_timeout = work, base, case_timeout
        self.canary_dir = work / "canary"
        self.canary_dir.mkdir(exist_ok=True)
        self.canary_file = work / "CANARY-RAN"
        (self.canary_dir / f"{CANARY}.py").write_text(
            "import pathlib\n"
            f"pathlib.Path({str(self.canary_file)!r}).write_text('imported')\n\n\n"
            "def make(*, in_channels, num_classes, **kwargs):\n"
            f"    pathlib.Path({str(self.canary_file)!r}).write_text('called')\n"
            "    from advc.runtime.models import build_model\n\n"
            "    return build_model('small_cnn', in_channels=in_channels, num_classes=num_classes)\n"
        )
        outside = work / "outside.adv"
        outside.write_text(QUICKSTART.read_text())
        self.ctx = Context(self.canary_file, outside)
        if str(self.canary_dir) not in sys.path:  # a wrongful import would succeed, and be seen
            sys.path.insert(0, str(self.canary_dir))
        self.env = dict(os.environ, OMP_NUM_THREADS="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(self.canary_dir), os.environ.get("PYTHONPATH")])))
        self.stats = Stats()
        # the untouched folder's numbers, through the same paths the cases take
        self.reference = eval_table(self._eval(self._copy("reference")).stdout)
        again = eval_table(self._eval(self._copy("reference-again")).stdout)
        if not self.reference or again != self.reference:
            raise RuntimeError(f"advc eval of the untouched folder is not reproducible: {self.reference} / {again}")
        done = self._resume(self._copy("reference-resume"))
        self.resume_reference = resume_table(self.work / "reference-resume")
        if done.code != 0 or self.resume_reference is None:
            raise RuntimeError(f"resume of the untouched folder failed: {done.stderr}{done.traceback}")

    def _copy(self, name: str) -> Path:
        d = self.work / name
        if d.exists() or d.is_symlink():
            shutil.rmtree(d)
        shutil.copytree(self.base, d, symlinks=True)
        return d

    def _eval(self, d: Path, trust: bool = False, subprocess_: bool = False) -> Outcome:
        argv = ["eval", str(d), *EVAL_ARGS, *(["--trust-code"] if trust else [])]
        if subprocess_:
            return run_subprocess(argv, self.case_timeout, self.env)
        return run_in_process(argv, self.case_timeout)

    def _resume(self, d: Path, trust: bool = False) -> Outcome:
        argv = ["run", str(QUICKSTART), *TRAIN, "--eval-n", str(N), "--quiet", "--out", str(d), "--resume",
                *(["--trust-code"] if trust else [])]  # fmt: skip
        return run_in_process(argv, self.case_timeout)

    def _fail(self, kind: str, label: str, detail: str) -> None:
        self.stats.failures.append([kind, label, detail[-1500:]])

    def _canary(self, label: str) -> None:
        ran = self.canary_file.exists() or CANARY in sys.modules
        if ran:
            self.stats.canary_runs += 1
            self._fail("canary ran", label, self.canary_file.read_text() if self.canary_file.exists() else "imported")
            self.canary_file.unlink(missing_ok=True)
            sys.modules.pop(CANARY, None)

    def _judge(self, label: str, outcome: Outcome, before: dict, d: Path, table, reference) -> bool:
        """Count one run of advc; True when it accepted the folder."""
        s = self.stats
        if outcome.seconds > s.slowest_s:
            s.slowest_s, s.slowest_case = outcome.seconds, label
        self._canary(label)
        if outcome.hang:
            s.hangs += 1
            self._fail("hang", label, f"> {self.case_timeout}s")
            return False
        if outcome.traceback is not None:
            s.tracebacks += 1
            self._fail("traceback", label, outcome.traceback)
            return False
        if outcome.code == 0:
            got = table()
            if got == reference:
                return True
            if isinstance(reference, list) and got and set(got) < set(reference):
                s.accepted_fewer_checkpoints += 1
                return True
            if isinstance(reference, dict) and got and all(got[k] == reference.get(k) for k in got):
                s.accepted_fewer_checkpoints += 1
                return True
            s.changed_numbers += 1
            self._fail("changed numbers", label, f"{got} != {reference}")
            return True
        errors = error_lines(outcome.stderr)
        located = [line for line in outcome.stderr.splitlines() if ": error: " in line]  # a spec diagnostic
        if len(errors) > 1:
            s.multi_line_errors += 1
            self._fail("several error lines", label, outcome.stderr)
        elif not errors and not located:
            s.silent_refusals += 1
            self._fail("refused without an error line", label, outcome.stderr + outcome.stdout)
        first = (errors or located)[:1]
        if first:
            message = first[0].split(" (")[0] if errors else first[0].split(": error: ", 1)[1]
            message = message.replace(str(d), "RUN")
            s.first_errors[message[:100]] += 1
        after = snapshot(d)
        if after != before:
            s.changed_folders += 1
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            self._fail("refusal changed the folder", label, f"{changed[:8]}\n{outcome.stderr}")
        return False

    def case(self, rng: random.Random, strategy: str, subprocess_: bool, resume: bool) -> None:
        s = self.stats
        s.cases += 1
        s.by_strategy[strategy] += 1
        d = self._copy("case")
        what, trust = mutate(rng, d, strategy, self.ctx)
        label = f"{strategy}: {what}"
        if resume:
            r = self.work / "case-resume"
            if r.exists():
                shutil.rmtree(r)
            shutil.copytree(d, r, symlinks=True)
        before = snapshot(d)
        outcome = self._eval(d, trust=trust, subprocess_=subprocess_)
        s.evals += 1
        s.subprocesses += subprocess_
        ok = self._judge(f"eval {label}", outcome, before, d, lambda: eval_table(outcome.stdout), self.reference)
        s.accepted += ok
        s.refused += not ok
        s.accepted_by_strategy[strategy] += ok
        if resume:
            before = snapshot(r)
            outcome = self._resume(r, trust=trust)
            s.resumes += 1
            ok = self._judge(f"resume {label}", outcome, before, r, lambda: resume_table(r), self.resume_reference)
            s.resume_accepted += ok
            s.resume_refused += not ok


def fuzz(cases: int, seed: int = 0, *, work: Path, base: Path | None = None, subprocess_every: int = 100,
         resume_every: int = 3, case_timeout: float = 120.0, progress: bool = False) -> Stats:
    """Run ``cases`` mutations of one trained run folder (trained into ``work`` unless ``base``)."""
    import torch

    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    base = base if base is not None else train_base(work / "base")
    fuzzer = Fuzzer(work, base, case_timeout)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    resumable = 0
    for i in range(cases):
        strategy = STRATEGIES[i % len(STRATEGIES)] if i < len(STRATEGIES) else rng.choice(STRATEGIES)
        resume = False
        if strategy in RESUME_STRATEGIES:
            resume = resumable % resume_every == 0
            resumable += 1
        fuzzer.case(rng, strategy, subprocess_=subprocess_every > 0 and i % subprocess_every == subprocess_every - 1,
                    resume=resume)  # fmt: skip
        if progress and (i + 1) % 100 == 0:
            st = fuzzer.stats
            print(f"  {i + 1} cases, {st.failed} failures ({st.tracebacks} tracebacks), "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)  # fmt: skip
    fuzzer.stats.seconds = time.perf_counter() - t0
    return fuzzer.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocess-every", type=int, default=100, help="every N-th case through python -m advc")
    parser.add_argument("--resume-every", type=int, default=3,
                        help="resume every N-th case of the strategies a resume reads")
    parser.add_argument("--case-timeout", type=float, default=120.0, help="seconds before a case is a hang")
    parser.add_argument("--base", type=Path, help="a trained run folder to start from (default: train one)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="write the counts here")
    parser.add_argument("--max-memory-gb", type=float, default=8.0,
                        help="cap this process's data segment: a runaway read fails instead of exhausting memory")
    args = parser.parse_args(argv)
    if args.max_memory_gb > 0:
        import resource

        cap = int(args.max_memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.getrlimit(resource.RLIMIT_DATA)[1]))

    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="advc-fuzz-")))
        stats = fuzz(args.cases, args.seed, work=work, base=args.base, subprocess_every=args.subprocess_every,
                     resume_every=args.resume_every, case_timeout=args.case_timeout, progress=True)  # fmt: skip
    s = stats
    print(f"cases {s.cases}  (advc eval {s.evals}, of them {s.subprocesses} as subprocesses; "
          f"advc run --resume {s.resumes})")  # fmt: skip
    print(f"eval: accepted {s.accepted} (fewer checkpoints {s.accepted_fewer_checkpoints}), refused {s.refused}; "
          f"resume: accepted {s.resume_accepted}, refused {s.resume_refused}")  # fmt: skip
    print(f"tracebacks {s.tracebacks}  canary runs {s.canary_runs}  changed numbers {s.changed_numbers}  "
          f"refusals that changed the folder {s.changed_folders}  several error lines {s.multi_line_errors}  "
          f"silent refusals {s.silent_refusals}  hangs {s.hangs}")  # fmt: skip
    print(f"slowest case {s.slowest_s:.2f}s: {s.slowest_case[:120]}")
    print(f"total {s.seconds:.0f}s (seed {args.seed})")
    print("most frequent refusals:")
    for message, count in s.first_errors.most_common(15):
        print(f"  {count:5d}  {message}")
    for failure in s.failures[:10]:
        print("FAILURE:", *failure, sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(s.as_dict(), indent=2) + "\n")
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
