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
import stat
from pathlib import Path

from advc.errors import UserError

LOCK_FILE = ".advc.lock"
LOCK_ENV = "ADVC_RUN_LOCKED"
# what an advc run folder holds (anything else in a folder means it belongs to someone else)
RUN_FILES = {"run.json", "resolved.json", "spec", "objective.py", "metrics.jsonl", "metrics.csv", "run.log",
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
    if locked_by_another(path):  # said first: the folder may look trained or empty only for now
        raise UserError("another advc run is writing to this run folder", where=where,
                        hint="wait for it to finish, or use another --out")
    check_no_links(path)
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


def check_no_links(path: Path) -> None:
    """advc writes only inside a run folder: an entry it writes (``spec/``, ``checkpoints/``,
    ``evaluations/``, ``run.json``, ...) that is a link, which would send those writes elsewhere,
    is refused."""
    for name in sorted(RUN_FILES):
        entry = path / name
        if entry.is_symlink():
            raise UserError(f"the run folder's {name} is a link (to {os.readlink(entry)}); advc writes only inside "
                            "a run folder", where=str(entry), hint="replace the link by the file or folder itself")


def locked_by_another(path: Path) -> bool:
    """Whether another process holds the folder's lock (probed, never taken; nothing is created)."""
    try:
        import fcntl

        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except (ImportError, OSError):  # no lock file (or Windows): nobody holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
    finally:
        os.close(fd)


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


METRICS_MAX_BYTES = 256 * 2**20  # a record is ~1 KB an epoch
_NUMBERS = ("lr", "loss", "kappa_mean", "bps", "bps_per_sample", "passes", "train_natural", "train_adversarial",
            "val_natural", "val_pgd20", "seconds")  # fmt: skip


def _metrics_row(row) -> bool:
    """Whether ``row`` is an epoch record as ``log`` writes it (the plots and tables read these)."""
    if not isinstance(row, dict):
        return False
    epoch = row.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 10**7:
        return False
    if any(row.get(k) is not None and (not isinstance(row[k], (int, float)) or isinstance(row[k], bool))
           for k in _NUMBERS):  # fmt: skip
        return False
    hist = row.get("kappa_hist", [])
    return isinstance(hist, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in hist)


def read_metrics(run_dir) -> list[dict]:
    """The per-epoch records of a run folder (an empty list when there are none); a line that is
    not such a record -- cut by a crash, or edited -- is skipped: the epoch is redone anyway."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        if path.stat().st_size > METRICS_MAX_BYTES:
            raise UserError(f"{METRICS} is larger than {METRICS_MAX_BYTES} bytes", where=str(path),
                            hint="the run folder was damaged or edited; move the file away to resume")
        for raw in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(raw) if raw.strip() else None
            except (json.JSONDecodeError, RecursionError):
                continue
            if _metrics_row(row):
                rows.append(row)
    return rows


def write_metrics(run_dir, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl with ``rows`` (through a temporary file: never half written)."""
    path = Path(run_dir) / METRICS
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


RECORD_MAX_BYTES = 4 * 2**20  # run.json is a few KB (its history grows by ~300 bytes a resume)
EDITED = "the run folder was edited or damaged; evaluate a checkpoint with --spec, or run it again"


def read_folder_file(run_dir: Path, name: str, limit: int) -> bytes:
    """The bytes of the file ``name`` of a run folder: a regular file inside the folder, at most
    ``limit`` bytes. A link out of the folder, a device (reading ``/dev/zero`` never ends) or a
    FIFO (opening one waits for a writer) is refused, not read."""
    path = run_dir / name
    try:
        inside = path.resolve().is_relative_to(run_dir.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise UserError(f"the run folder's {name} points outside the folder", where=str(path), hint=EDITED)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"the run folder's {name} is not a regular file", where=str(path), hint=EDITED)
            data = f.read(limit + 1)
    except OSError as exc:
        raise UserError(f"the run folder's {name} is unreadable: {exc.strerror or exc}", where=str(path),
                        hint=EDITED) from None
    if len(data) > limit:
        raise UserError(f"the run folder's {name} is larger than {limit} bytes", where=str(path), hint=EDITED)
    return data
