"""``advc sweep``: a grid of runs in one command -- checked up front, resumable, N at a time.

A sweep is the cartesian product of its specs, every ``--grid KEY=V1,V2,...`` and its ``--seeds``
(``train.seed``); every point is one ``advc run`` with ``--set`` overrides, in its own run folder
under the sweep folder (``--out``). What this module adds on top of ``advc run``:

- Every point is compiled before anything runs (``compile_run``, i.e. ``check_file`` with the
  point's overrides, exactly what its ``advc run`` will check): a bad key or value stops the sweep
  with the checker's caret diagnostic and writes nothing. Warnings print once, not once per point.
- Run folders are named from what varies: ``<objective>-<short key><value>...-seed<S>``
  (``fat-eps0.2-seed1``), sanitised to safe file names; names that would collide (also when only
  their case differs) or that run past ``MAX_NAME`` characters get a short hash of the point.
- ``sweep.json`` records the command's definition (specs, grid, seeds, --set, --eval, --eval-n,
  --no-eval) and every point (folder, spec, overrides). A folder whose sweep.json describes
  another sweep is refused, so reruns can never mix two grids.
- Reruns finish only what is missing. A point is *complete* when its run folder holds a valid
  ``results.json`` -- or, in a ``--no-eval`` sweep, when its last checkpoint is from the final
  epoch (read from the checkpoint's header, without torch). A folder with a last checkpoint but
  no results (killed mid-way, also during the final evaluation, which a resume at the final
  epoch then redoes) is continued with ``advc run --resume``;
  anything else starts afresh. A run folder holding another training (the spec file changed since)
  is refused up front rather than skipped or resumed.
- ``--jobs N`` runs N ``advc run`` subprocesses at a time, each with ``max(1, cores // N)``
  threads (OMP_NUM_THREADS / MKL_NUM_THREADS; torch takes its thread count from them);
  ``--gpus N`` runs one at a time per GPU (CUDA_VISIBLE_DEVICES). Each child runs in its own
  process group, so Ctrl-C reaches the sweep only and each run is stopped exactly once (SIGINT,
  then SIGTERM and SIGKILL after grace periods); on Linux a child also gets SIGTERM if the
  sweep itself dies (``kill -9``), so no orphan keeps a run folder locked.
- Each run's output goes to ``<run folder>/run.log`` (appended over attempts), never to the
  console, which shows one progress display for the whole sweep (rich on a terminal, plain lines
  otherwise). The log reaches the folder only once the run has claimed it (its run.json exists):
  ``advc run`` refuses a fresh folder holding files it does not know, and removes a folder it
  created when the run fails before its first checkpoint -- the sweep then writes the log back,
  and moves such a lone log into the next attempt's log before starting it.
- At the end: failed runs with their last error line and log, then
  ``advc.runtime.results.merge_runs`` over the complete run folders (stdout).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import io
import itertools
import json
import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from advc.errors import AdvcError, UserError

SWEEP_FILE = "sweep.json"
LOG_FILE = "run.log"
MAX_NAME = 100  # characters of a run folder's name before it is shortened to a prefix and a hash
GRACE_S = (20.0, 10.0)  # after Ctrl-C: SIGINT, this long, SIGTERM, this long, SIGKILL
POLL_S = 0.2
# what makes two sweeps the same sweep (the rest -- --jobs, --gpus, --data-root -- is how it runs)
DEFINITION = ("specs", "grid", "seeds", "set", "eval", "eval_n", "no_eval")


@dataclasses.dataclass
class SweepOptions:
    """What ``advc sweep`` was asked to do (the CLI's options, one field each)."""

    specs: list[Path]
    out: Path
    grid: list[str] = dataclasses.field(default_factory=list)  # "KEY=V1,V2,..." each
    seeds: str | None = None  # "0,1,2"; None: each spec's own train.seed
    overrides: list[str] = dataclasses.field(default_factory=list)  # --set, for every run
    jobs: int | None = None
    gpus: int = 0
    eval_extra: str | None = None
    eval_n: int | None = None
    no_eval: bool = False
    trust_code: bool = False
    data_root: str | None = None
    spec_path: list[str] = dataclasses.field(default_factory=list)
    allow: list[str] = dataclasses.field(default_factory=list)
    strict: bool = False
    quiet: bool = False
    command: str | None = None  # the command line, for "rerun ... to continue"


@dataclasses.dataclass
class Point:
    """One run of the sweep."""

    spec: str  # as given on the command line
    overrides: list[str]  # --set, then the grid's values, then train.seed
    grid: list[tuple[str, str]]  # this point's grid values
    seed: int | None  # the --seeds value (None: the spec's own, filled in by the check)
    objective: str = ""  # the spec's objective name (from the check)
    training_id: str = ""
    epochs: int = 0
    folder: str = ""  # the run folder's name inside the sweep folder

    def digest(self) -> str:
        text = json.dumps([os.path.normpath(self.spec), self.overrides])
        return hashlib.sha256(text.encode()).hexdigest()[:8]


# --- the grid ------------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """``0.1, 0.2`` -> ["0.1", "0.2"]; commas inside brackets or quotes belong to the value
    (``weight=gair(fn = tanh, lambda = 0),none`` is two values)."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def parse_grid(items: list[str], overrides: list[str], seeds: bool) -> list[tuple[str, list[str]]]:
    """``--grid KEY=V1,V2`` options as [(key, values)], in the order given. The keys and values
    themselves are the checker's to judge, when every point is compiled."""
    set_keys = {o.partition("=")[0].strip() for o in overrides}
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        where = f"--grid {item}"
        if not sep or not key:
            raise UserError("a --grid option needs KEY=V1,V2,...", where=where, hint="e.g. --grid threat.eps=0.1,0.2")
        values = split_values(text)
        if "" in values:
            raise UserError("empty value in --grid", where=where, hint="separate the values by single commas")
        if len(set(values)) < len(values):
            twice = next(v for v in values if values.count(v) > 1)
            raise UserError(f"the value {twice} is given twice", where=where, hint="give each value once")
        if key == "train.seed":
            raise UserError("the seeds have their own option", where=where,
                            hint=f"use --seeds {','.join(values)}")
        if any(k == key for k, _ in grid):
            raise UserError(f"--grid {key} is given twice", where=where, hint="list all its values in one --grid")
        if key in set_keys:
            raise UserError(f"{key} is both in --set and in --grid", where=where,
                            hint="--set fixes a value for every run; drop it or the --grid")
        grid.append((key, values))
    if seeds and "train.seed" in set_keys:
        raise UserError("train.seed is both in --set and --seeds", where="--set train.seed", hint="drop one of them")
    return grid


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    seeds = []
    for part in text.split(","):
        try:
            seed = int(part.strip())
        except ValueError:
            seed = -1
        if seed < 0:
            raise UserError(f"a seed must be a whole number >= 0, got {part.strip()!r}", where=f"--seeds {text}",
                            hint="e.g. --seeds 0,1,2")
        if seed in seeds:
            raise UserError(f"seed {seed} is given twice", where=f"--seeds {text}", hint="give each seed once")
        seeds.append(seed)
    return seeds


def expand(specs: list[str], grid: list[tuple[str, list[str]]], seeds: list[int] | None,
           overrides: list[str]) -> list[Point]:
    """Every point, seeds outermost: a sweep stopped early has all settings of its first seeds."""
    points = []
    for seed in seeds if seeds is not None else [None]:
        for spec in specs:
            for values in itertools.product(*(v for _, v in grid)):
                pairs = [(k, v) for (k, _), v in zip(grid, values)]
                sets = list(overrides) + [f"{k}={v}" for k, v in pairs]
                if seed is not None:
                    sets.append(f"train.seed={seed}")
                points.append(Point(spec=spec, overrides=sets, grid=pairs, seed=seed))
    return points


def _safe(text: str) -> str:
    """A value as a piece of a file name: letters, digits, '.', '+', '-'; anything else '_'."""
    out, gap = [], False
    for ch in "".join(text.split()):
        if ch.isascii() and (ch.isalnum() or ch in ".+-"):
            out.append(ch)
            gap = False
        elif not gap:
            out.append("_")
            gap = True
    return "".join(out).strip("_") or "_"


def folder_names(points: list[Point], grid: list[tuple[str, list[str]]]) -> list[str]:
    """``<objective>-<short key><value>...-seed<S>`` per point, for the grid keys that vary;
    colliding (also case-insensitively) or overlong names get a hash of their point."""
    varying = [k for k, values in grid if len(values) > 1]
    short = {k: k.rpartition(".")[2] for k in varying}
    if len(set(short.values())) < len(short):  # two keys end alike (attack.steps, eval.steps)
        short = {k: k for k in varying}
    names = []
    for p in points:
        parts = [_safe(p.objective)]
        for k, v in p.grid:
            if k in short:
                piece = _safe(v)
                parts.append(short[k] + (piece if piece[0].isdigit() or piece[0] in ".+-" else "_" + piece))
        parts.append(f"seed{p.seed}")
        names.append("-".join(parts))
    counts = collections.Counter(n.lower() for n in names)
    out = []
    for p, name in zip(points, names):
        clash = counts[name.lower()] > 1 or len(name) > MAX_NAME
        out.append(name[: MAX_NAME - 9].rstrip("-_.") + "-" + p.digest() if clash else name)
    return out


# --- checking every point before anything runs ---------------------------------------------


class PointError(AdvcError):
    """A point that does not check: the checker's diagnostic, then which point it was."""

    def __init__(self, err: AdvcError, point: Point, index: int, total: int):
        self.err, self.exit_code = err, err.exit_code
        sets = " ".join(f"--set {shlex.quote(o)}" for o in point.overrides)
        self.context = UserError(
            f"no run was started: point {index} of {total} does not check", where=f"{point.spec} {sets}".strip(),
            hint="fix the --grid or --set value shown above (--set#N is the point's N-th --set)")
        super().__init__(self.render())

    def render(self) -> str:
        return self.err.render() + "\n" + self.context.render()


def run_options(point: Point, opts: SweepOptions, folder: Path, resume: bool = False):
    """The ``advc run`` a point is: its RunOptions."""
    from advc.runtime.run import RunOptions

    return RunOptions(spec=Path(point.spec), overrides=list(point.overrides), out=folder, resume=resume,
                      data_root=opts.data_root, evaluate=not opts.no_eval, eval_n=opts.eval_n,
                      trust_code=opts.trust_code, spec_path=list(opts.spec_path), allow=list(opts.allow),
                      strict=opts.strict, eval_extra=opts.eval_extra)


def run_command(opts) -> list[str]:
    """The ``advc run`` command line of a point's RunOptions (the options a sweep sets)."""
    argv = [sys.executable, "-m", "advc", "run", str(opts.spec), "--out", str(opts.out)]
    for o in opts.overrides:
        argv += ["--set", o]
    if opts.resume:
        argv.append("--resume")
    if not opts.evaluate:
        argv.append("--no-eval")
    if opts.eval_n is not None:
        argv += ["--eval-n", str(opts.eval_n)]
    if opts.eval_extra:
        argv += ["--eval", opts.eval_extra]
    if opts.trust_code:
        argv.append("--trust-code")
    if opts.data_root is not None:
        argv += ["--data-root", opts.data_root]
    for folder in opts.spec_path:
        argv += ["--spec-path", folder]
    for code in opts.allow:
        argv += ["--allow", code]
    if opts.strict:
        argv.append("--strict")
    return argv


def check_points(points: list[Point], opts: SweepOptions) -> list[str]:
    """Compile every point as its ``advc run`` will (fills in objective, seed, training id);
    returns the warnings, each once. The first point that does not check raises PointError."""
    from advc.compiler.check import check_attacks
    from advc.compiler.identity import training_id
    from advc.runtime.run import check_options, compile_run

    check_options(run_options(points[0], opts, opts.out))
    if opts.eval_extra:
        check_attacks(opts.eval_extra, "--eval")
    warnings: list[str] = []
    for i, point in enumerate(points, start=1):
        printed = io.StringIO()
        try:
            program, _, _ = compile_run(run_options(point, opts, opts.out), printed)  # warnings: below, once
        except AdvcError as err:
            sys.stderr.write(printed.getvalue())  # (the warnings --strict refuses)
            raise PointError(err, point, i, len(points)) from None
        point.objective, point.training_id, point.epochs = program.name, training_id(program), program.train.epochs
        if point.seed is None:
            point.seed = program.train.seed
        for w in program.warnings:
            if w.code not in opts.allow and w.rendered not in warnings:
                warnings.append(w.rendered)
    return warnings


# --- the sweep folder ----------------------------------------------------------------------


def definition(opts: SweepOptions, grid, seeds) -> dict:
    return {"specs": [os.path.normpath(str(s)) for s in opts.specs], "grid": {k: v for k, v in grid},
            "seeds": seeds, "set": list(opts.overrides), "eval": opts.eval_extra, "eval_n": opts.eval_n,
            "no_eval": opts.no_eval}


def read_sweep_record(out: Path) -> dict | None:
    """The folder's sweep.json (None when there is none); a folder holding other files is refused."""
    file = out / SWEEP_FILE
    if out.exists() and not out.is_dir():
        raise UserError("--out names a file, not a folder", where=str(out), hint="name a folder for the sweep")
    if not file.is_file():
        if out.is_dir() and any(not e.name.startswith(".") for e in out.iterdir()):
            raise UserError("--out holds files but no sweep.json: it is not an advc sweep folder; nothing was changed",
                            where=str(out), hint="name a new or empty folder for the sweep")
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"unreadable sweep record: {exc}", where=str(file), hint="--out another folder") from None
    if not isinstance(record, dict) or record.get("format") != "advc-sweep" or not isinstance(record.get("points"), list):
        raise UserError("not an advc sweep record", where=str(file), hint="--out another folder")
    return record


def check_same_sweep(record: dict, mine: dict, file: Path) -> None:
    for key in DEFINITION:
        if record.get(key) != mine[key]:
            raise UserError(f"the folder holds another sweep: its {key.replace('_', '-')} differs "
                            f"({json.dumps(record.get(key))} there, {json.dumps(mine[key])} now)", where=str(file),
                            hint="--out another folder, or repeat that sweep's own command")


def lock_sweep_folder(out: Path):
    from advc.runtime.folders import lock_run_folder

    try:
        return lock_run_folder(out)
    except UserError as err:
        if err.message.startswith("another"):
            raise UserError("another advc sweep is running in this folder", where=str(out),
                            hint="wait for it to finish, or use another --out") from None
        raise


def point_state(folder: Path, point: Point, no_eval: bool) -> str:
    """'complete', 'resume' (a last checkpoint, no results) or 'fresh'."""
    from advc.runtime.results import load_results

    last = folder / "checkpoints" / "last.safetensors"
    if no_eval:
        epoch = checkpoint_epoch(last)
        if epoch is not None and epoch >= point.epochs - 1:
            return "complete"
    elif (folder / "results.json").is_file():
        with contextlib.suppress(UserError):
            load_results(folder)
            return "complete"
    return "resume" if last.is_file() else "fresh"


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved after, from the JSON state in its safetensors header
    (``advc.runtime.checkpoint``'s format; only the header is read, torch is not imported);
    None when there is no readable checkpoint -- loading it is ``advc run --resume``'s job."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            epoch = json.loads((f.metadata() or {})["advc"])["extra"]["epoch"]
    except Exception:  # safetensors raises its own error types; any damage means "not complete"
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def check_run_folder(folder: Path, point: Point) -> None:
    """A point's folder, if there is one, is this point's run (or the sweep's lone log)."""
    from advc.runtime.folders import is_run_folder

    if not folder.is_dir():
        return
    if is_run_folder(folder):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("training_id")
            if recorded and recorded != point.training_id:
                raise UserError("the run folder holds a run of other settings (did the spec change since?)",
                                where=str(folder), hint="--out another folder for the new settings")
        return
    foreign = sorted(e.name for e in folder.iterdir() if e.name != LOG_FILE and not e.name.startswith("."))
    if foreign:
        raise UserError(f"a run folder of the sweep holds files that are not an advc run ({', '.join(foreign[:3])}); "
                        "nothing was changed", where=str(folder), hint="move them away, or --out another folder")


# --- one running point ---------------------------------------------------------------------


class RunLog:
    """A run's output, kept in ``<run folder>/run.log`` (see the module docstring for when)."""

    def __init__(self, folder: Path, header: str):
        from advc.runtime.folders import is_run_folder

        self.folder, self.file = folder, None
        self.lines: list[bytes] = []
        self.written = 0
        self.claimed = is_run_folder(folder)  # already a run folder: advc run will not refuse the log
        lone = folder / LOG_FILE
        if not self.claimed and lone.is_file():  # a log from an attempt that left no run behind
            self.lines.append(lone.read_bytes())
            lone.unlink()
        self.lines.append(header.encode())
        self.first = len(self.lines)  # this attempt's own output starts here
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        """Output as it comes (whole lines are kept; a partial one waits for its end)."""
        *whole, self.partial = (self.partial + chunk).split(b"\n")
        if not whole:
            return
        self.lines.extend(line + b"\n" for line in whole)
        if self.file is None and (self.claimed or (self.folder / "run.json").is_file()):
            self.file = open(self.folder / LOG_FILE, "ab")  # noqa: SIM115 - open for the run's lifetime
        if self.file is not None:
            self.file.writelines(self.lines[self.written :])
            self.file.flush()
            self.written = len(self.lines)

    def close(self) -> None:
        if self.partial:
            self.feed(b"\n")
        if self.file is not None:
            self.file.close()
        if self.file is None or not self.folder.is_dir():  # never claimed, or removed by a failed run
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / LOG_FILE, "ab") as f:
                f.writelines(self.lines)

    def output(self) -> list[str]:
        """This attempt's lines, stripped, without blank ones."""
        lines = (raw.decode("utf-8", "replace").strip() for raw in self.lines[self.first :])
        return [line for line in lines if line]

    def last_error(self) -> str:
        """The run's last ``error:`` line, else its last line."""
        lines = self.output()
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or ["(no output)"])[-1]

    def last_line(self) -> str:
        lines = self.output()
        return lines[-1] if lines else ""


@dataclasses.dataclass
class Job:
    point: Point
    proc: subprocess.Popen
    log: RunLog
    started: float
    open: bool = True  # its output pipe has not ended yet
    exited: float | None = None


def cores() -> int:
    """The cores this process may use (its affinity mask: a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def job_env(slot: int, jobs: int, gpus: int, base: dict | None = None) -> dict[str, str]:
    """The environment of the run in ``slot``: its share of the cores, its GPU."""
    env = dict(os.environ if base is None else base)
    threads = str(max(1, cores() // jobs))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    env["PYTHONUNBUFFERED"] = "1"  # lines reach run.log as they are printed
    if gpus:
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[slot] if len(visible) >= gpus else str(slot)
    return env


def _die_with_parent():
    """Linux: a child gets SIGTERM when the sweep dies (kill -9, a crash): no orphan keeps training."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the sweep died before the line above
            os._exit(1)

    return preexec


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.name == "posix":
            os.killpg(proc.pid, sig)  # the run and anything it started (its own process group)
        else:  # pragma: no cover
            proc.terminate()


# --- the progress display ------------------------------------------------------------------


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Display:
    """One display for the whole sweep on stderr: a live panel on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.live = quiet, None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self.live.start()

    def line(self, text: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def panel(self, status: str, running: list[tuple[str, float, str]]) -> None:
        if self.live is None:
            return
        from rich.text import Text

        text = Text()
        text.append(status, style="bold")
        for name, seconds, last in running:
            text.append(f"\n  {name}  {clock(seconds)}  ", style="")
            text.append(last, style="dim")
        text.no_wrap, text.overflow = True, "ellipsis"
        self.live.update(text)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


# --- running the points --------------------------------------------------------------------


class Runner:
    """Starts the points' ``advc run`` subprocesses, ``jobs`` at a time, until all ran or Ctrl-C."""

    def __init__(self, todo: list[tuple[Point, str]], opts: SweepOptions, jobs: int, display: Display,
                 total: int, complete_before: int):
        self.waiting = collections.deque(todo)
        self.opts, self.jobs, self.display = opts, jobs, display
        self.total, self.complete_before = total, complete_before
        self.running: dict[int, Job] = {}
        self.done: list[Point] = []
        self.failed: list[tuple[Point, str]] = []
        self.durations: list[float] = []
        self.signals = 0
        self.stopping_since: float | None = None
        self.escalated = 0
        self.t0 = time.monotonic()

    # signals ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def run(self) -> None:
        """One loop, no threads: start runs into free slots, read their output, reap them."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        preexec = _die_with_parent()
        self.selector = selectors.DefaultSelector()
        try:
            while self.running or (self.waiting and self.stopping_since is None):
                if self.signals and self.stopping_since is None:
                    self._stop()
                if self.stopping_since is None:
                    free = [s for s in range(self.jobs) if s not in self.running]
                    while self.waiting and free:
                        self._start(*self.waiting.popleft(), free.pop(0), preexec)
                self._read()
                now = time.monotonic()
                for slot, job in list(self.running.items()):
                    if job.exited is None and job.proc.poll() is not None:
                        job.exited = now
                    # (a process it started may hold the pipe open: do not wait for that forever)
                    if job.exited is not None and (not job.open or now - job.exited > 5.0):
                        del self.running[slot]
                        self._finish(job)
                if self.stopping_since is not None:
                    self._escalate()
                self._panel()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            for job in self.running.values():  # only on an unexpected error: leave no child behind
                _signal_group(job.proc, signal.SIGKILL)
            self.selector.close()

    def _read(self) -> None:
        """Whatever the running runs printed, into their logs (waits up to POLL_S for it)."""
        if not self.selector.get_map():
            time.sleep(POLL_S)
            return
        for key, _ in self.selector.select(POLL_S):
            job = key.data
            chunk = os.read(key.fd, 1 << 16)
            if chunk:
                job.log.feed(chunk)
            else:
                self.selector.unregister(key.fd)
                job.open = False

    def _start(self, point: Point, mode: str, slot: int, preexec) -> None:
        folder = self.opts.out / point.folder
        argv = run_command(run_options(point, self.opts, folder.resolve(), resume=mode == "resume"))
        shown = "advc " + shlex.join(argv[3:]) if argv[1:3] == ["-m", "advc"] else shlex.join(argv)
        header = f"--- advc sweep, {time.strftime('%Y-%m-%d %H:%M:%S')}: {shown}\n"
        log = RunLog(folder, header)
        env = job_env(slot, self.jobs, self.opts.gpus)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True,
                                preexec_fn=preexec)  # noqa: PLW1509 - the sweep runs no threads
        job = Job(point, proc, log, time.monotonic())
        self.selector.register(proc.stdout, selectors.EVENT_READ, job)
        self.running[slot] = job
        where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self.opts.gpus else ""
        self.display.line(f"start  {point.folder}" + (" (resume)" if mode == "resume" else "") + where)

    def _finish(self, job: Job) -> None:
        if job.open:
            self.selector.unregister(job.proc.stdout)
        job.proc.stdout.close()
        job.log.close()
        seconds = time.monotonic() - job.started
        folder = self.opts.out / job.point.folder
        state = point_state(folder, job.point, self.opts.no_eval)
        log = folder / LOG_FILE
        if state == "complete" and job.proc.returncode == 0:
            self.done.append(job.point)
            self.durations.append(seconds)
            self.display.line(f"done   {job.point.folder} in {clock(seconds)} -- {self.status()}")
        elif self.stopping_since is not None:
            self.display.line(f"stopped {job.point.folder} after {clock(seconds)}")
        else:
            code = job.proc.returncode
            why = job.log.last_error() if code else "it ended without its results"
            if code and code < 0:
                with contextlib.suppress(ValueError):
                    code = signal.Signals(-code).name
                why = f"killed by {code}; {why}"
            self.failed.append((job.point, why))
            self.display.line(f"FAILED {job.point.folder}: {why} (log: {log}) -- {self.status()}", always=True)

    def _stop(self) -> None:
        self.stopping_since = time.monotonic()
        self.display.line(f"interrupted: stopping {len(self.running)} running run(s) (Ctrl-C again to hurry)",
                          always=True)
        for job in self.running.values():
            _signal_group(job.proc, signal.SIGINT)

    def _escalate(self) -> None:
        """SIGINT was sent; after a grace period (or another Ctrl-C) SIGTERM, then SIGKILL."""
        waited = time.monotonic() - self.stopping_since
        due = 0
        if waited > GRACE_S[0] or self.signals > 1:
            due = 1
        if waited > GRACE_S[0] + GRACE_S[1] or self.signals > 2:
            due = 2
        while self.escalated < due:
            self.escalated += 1
            for job in self.running.values():
                _signal_group(job.proc, signal.SIGTERM if self.escalated == 1 else signal.SIGKILL)

    # progress -----------------------------------------------------------------------------
    def eta(self) -> float | None:
        """From the finished runs' mean duration: the waiting runs' and the running ones' rest, over the jobs."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        left = [max(mean - (now - j.started), 0.0) for j in self.running.values()]
        work = len(self.waiting) * mean + sum(left)
        return max(work / self.jobs, max(left, default=0.0))

    def status(self) -> str:
        done = self.complete_before + len(self.done)
        text = (f"{done}/{self.total} done, {len(self.running)} running, {len(self.waiting)} waiting, "
                f"{len(self.failed)} failed; elapsed {clock(time.monotonic() - self.t0)}")
        return text + ("" if self.stopping_since is not None else f", eta {clock(self.eta())}")

    def _panel(self) -> None:
        now = time.monotonic()
        running = [(j.point.folder, now - j.started, j.log.last_line()) for j in self.running.values()]
        self.display.panel("sweep: " + self.status(), running)


# --- the command ---------------------------------------------------------------------------


def sweep(opts: SweepOptions) -> int:
    """``advc sweep``: returns an exit code (0: every point complete; 1: some failed; 130: stopped)."""
    from advc import __version__
    from advc.files import atomic_write_text

    jobs = _check_options(opts)
    seeds = parse_seeds(opts.seeds)
    grid = parse_grid(opts.grid, opts.overrides, seeds is not None)
    if opts.gpus:
        from advc.runtime.launch import require_gpus

        require_gpus(opts.gpus)
    points = expand([str(s) for s in opts.specs], grid, seeds, opts.overrides)
    for text in check_points(points, opts):
        print(text, file=sys.stderr)
    for point, name in zip(points, folder_names(points, grid)):
        point.folder = name

    # the sweep folder: the same sweep or a new one, one sweep at a time
    out = opts.out
    mine = definition(opts, grid, seeds)
    record = read_sweep_record(out)
    if record is not None:
        check_same_sweep(record, mine, out / SWEEP_FILE)
        _keep_folder_names(record, points)
    lock = lock_sweep_folder(out)
    try:
        for point in points:
            check_run_folder(out / point.folder, point)
        if record is None:
            record = {"format": "advc-sweep", "version": 1, **mine, "command": opts.command,
                      "points": [{"folder": p.folder, "spec": p.spec, "overrides": p.overrides} for p in points],
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "advc_version": __version__}
            atomic_write_text(out / SWEEP_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        states = [point_state(out / p.folder, p, opts.no_eval) for p in points]
        todo = [(p, s) for p, s in zip(points, states) if s != "complete"]
        before = len(points) - len(todo)
        resumes = sum(s == "resume" for _, s in todo)
        display = Display(opts.quiet)
        display.line(f"sweep {out}: {len(points)} runs; {before} complete, {resumes} to resume, "
                     f"{len(todo) - resumes} to start; {jobs} at a time, {max(1, cores() // jobs)} thread(s) each")
        runner = Runner(todo, opts, jobs, display, len(points), before)
        try:
            runner.run()
        finally:
            display.stop()
    finally:
        lock.release()
    return _report(opts, points, states, runner, display)


def _check_options(opts: SweepOptions) -> int:
    """The options that need no spec, checked; the number of runs at a time."""
    if not opts.specs:
        raise UserError("no spec to sweep", where="advc sweep", hint="name one or more spec files")
    if len({os.path.normpath(str(s)) for s in opts.specs}) < len(opts.specs):
        raise UserError("a spec is given twice", where="advc sweep", hint="name each spec once")
    if opts.gpus < 0:
        raise UserError(f"--gpus must be 0 or more, got {opts.gpus}", where="--gpus")
    if opts.jobs is not None and opts.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {opts.jobs}", where="--jobs")
    if opts.gpus and opts.jobs is not None and opts.jobs != opts.gpus:
        raise UserError("with --gpus N the sweep runs one run per GPU at a time", where=f"--jobs {opts.jobs}",
                        hint="drop --jobs (multi-GPU runs: advc run --gpus N)")
    return opts.gpus or opts.jobs or 1


def _keep_folder_names(record: dict, points: list[Point]) -> None:
    """A continued sweep keeps the folder names it was started with, should naming ever change."""
    kept = {(p.get("spec"), tuple(p.get("overrides", ()))): p.get("folder") for p in record["points"]
            if isinstance(p, dict)}
    for point in points:
        name = kept.get((point.spec, tuple(point.overrides)))
        if isinstance(name, str) and name and Path(name).name == name:
            point.folder = name


def _report(opts: SweepOptions, points: list[Point], states: list[str], runner: Runner, display: Display) -> int:
    """The closing lines -- interrupted, or what completed and failed, then the table -- and the exit code."""
    from advc.runtime.results import merge_runs

    out = opts.out
    say = display.line
    if runner.stopping_since is not None:
        incomplete = [p.folder for p, s in zip(points, states) if s != "complete" and p not in runner.done]
        shown = ", ".join(incomplete[:10]) + (", ..." if len(incomplete) > 10 else "")
        say(f"interrupted: {len(incomplete)} of {len(points)} runs incomplete: {shown}", always=True)
        say("their folders are kept; rerun the same command to continue"
            + (f": {opts.command}" if opts.command else ""), always=True)
        return 130
    complete = [p for p in points if point_state(out / p.folder, p, opts.no_eval) == "complete"]
    say(f"sweep {out}: {len(complete)} of {len(points)} runs complete ({len(runner.done)} now), "
        f"{len(runner.failed)} failed, in {clock(time.monotonic() - runner.t0)}", always=True)
    for point, why in runner.failed:
        say(f"failed: {point.folder}: {why} (log: {out / point.folder / LOG_FILE})", always=True)
    if opts.no_eval:
        say("no evaluation in this sweep (--no-eval): `advc eval RUN` evaluates a run folder", always=True)
    elif complete:
        try:
            print("\n" + merge_runs([out / p.folder for p in complete]), end="", flush=True)
        except UserError as err:
            say(err.render(), always=True)
    return 1 if runner.failed else 0
