"""Run folders: which folders a run may write to, and one writer per folder.

``--out`` takes a new folder, an empty one, or an advc run folder (continued with ``--resume``,
refused without it once it holds a trained run); a folder holding anything else is refused
without touching it, so a run can never overwrite a user's files. An advisory lock
(``fcntl.flock`` on ``<run>/.advc.lock``, released by the OS when the process dies) is held for
the whole run: a second ``advc run`` into the same folder fails at once with one line.

``advc run`` takes the lock before it writes the spec and the generated program, and hands it
to the program it starts by naming the folder in ``$ADVC_RUN_LOCKED``; a program started by hand
(``accelerate launch runs/x/objective.py``) takes the lock itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

from advc.errors import UserError

LOCK_FILE = ".advc.lock"
LOCK_ENV = "ADVC_RUN_LOCKED"
# what an advc run folder holds (anything else in a folder means it belongs to someone else)
RUN_FILES = {"run.json", "resolved.json", "spec", "spec.adv", "objective.py", "metrics.jsonl", "metrics.csv", "run.log",
             "results.json", "results.md", "checkpoints", "evaluations", "plots", "tensorboard", LOCK_FILE,
             "events"}  # fmt: skip


CHECKPOINT_DIR = "checkpoints"
METRICS = "metrics.jsonl"  # one JSON record per finished epoch


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds an advc run (its record or a checkpoint)."""
    return (path / "run.json").is_file() or (path / CHECKPOINT_DIR).is_dir()


def check_out(path: Path, *, resume: bool) -> None:
    """Refuse an ``--out`` that is not a new folder, an empty one or an advc run folder."""
    where = str(path)
    if path.exists() and not path.is_dir():
        raise UserError("--out names a file, not a folder", where=where, hint="name a new folder for the run")
    resolved = path.resolve()
    if resolved.parts[:2] in (("/", "proc"), ("/", "sys"), ("/", "dev")):
        raise UserError("--out must not be under /proc, /sys or /dev", where=where, hint="name a folder on disk")
    parent = next((p for p in [resolved, *resolved.parents] if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK):
        raise UserError("cannot write there: permission denied", where=str(parent or resolved),
                        hint="name a folder you can write to")
    if not path.is_dir():
        if resume:
            raise UserError("nothing to resume: the run folder does not exist", where=where,
                            hint="start the run without --resume")
        return
    try:
        entries = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise UserError(f"cannot read the folder: {exc.strerror or exc}", where=where) from None
    foreign = sorted(e for e in entries if e not in RUN_FILES and not e.startswith("."))
    if foreign and not is_run_folder(path):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"--out holds files that are not an advc run ({shown}); nothing was changed", where=where,
                        hint="name a new or empty folder for the run")
    trained = (path / CHECKPOINT_DIR / "last.safetensors").is_file()
    if resume and not trained:
        raise UserError("nothing to resume: no last checkpoint", where=str(path / CHECKPOINT_DIR / "last.safetensors"),
                        hint="start the run without --resume")
    if not resume and trained:
        raise UserError("the run folder already holds a trained run", where=where,
                        hint="pass --resume to continue it, or --out DIR for a fresh run folder")


class Lock:
    """An advisory lock on a run folder, held until ``release`` (or the process ends)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def lock_run_folder(path: Path) -> Lock:
    """Take the folder's lock, creating the folder; one line if another run holds it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"cannot create the run folder: {exc.strerror or exc}", where=str(path)) from None
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            raise UserError("another advc run is writing to this run folder", where=str(path),
                            hint="wait for it to finish, or use another --out") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UserError("another advc run is writing to this run folder", where=str(path),
                            hint="wait for it to finish, or use another --out") from None
        raise UserError(f"cannot lock the run folder: {exc.strerror or exc}", where=str(path)) from None
    return Lock(fd)


def claim_run_folder(path: Path, *, resume: bool) -> Lock:
    """What a training program does first: the folder is acceptable, and this run is its writer
    (or ``advc run``, which started it, is)."""
    if os.environ.get(LOCK_ENV) == str(path.resolve()):
        return Lock(None)  # held by the advc run that started this program
    check_out(path, resume=resume)
    return lock_run_folder(path)


def read_metrics(run_dir) -> list[dict]:
    """The per-epoch records of a run folder (an empty list when there are none)."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(raw) if raw.strip() else None
            except json.JSONDecodeError:  # a line cut by a crash: the epoch is redone anyway
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def write_metrics(run_dir, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with ``rows`` (through a temporary file: never half written)."""
    path = Path(run_dir) / METRICS
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
