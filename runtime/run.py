"""``advc run``: check the spec, set up the run folder, and execute the generated training program.

The program is the module ``advc compile`` writes (its ``main()`` is the Accelerate loop). This
module only does what comes before it: every option and path is checked before anything is
read or written; the run folder is claimed (``runtime/folders.py``: one writer, never a foreign
folder); the spec files, the experiment record and the generated code are written into it;
then the program runs -- in this process for one process, or under ``accelerate launch`` on the
same file for ``--gpus N`` / ``--cpu-procs N``, with the options handed over by
``RunArgs.to_argv`` (no argv rebuilt by hand). If the run fails before its first checkpoint,
a run folder this call created is removed again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path

from advc.errors import UserError

RUN_RECORD = "run.json"
NOT_A_RUN = "not an advc run folder: no run.json"
NOT_A_RUN_HINT = "point at a folder advc run wrote (an older advc's runs need training again), or at a checkpoint with --spec"


@dataclasses.dataclass
class RunOptions:
    """What ``advc run`` was asked to do (the CLI's options, one field each)."""

    spec: Path
    overrides: list[str] = dataclasses.field(default_factory=list)
    out: Path | None = None
    resume: bool = False
    gpus: int = 0  # 0: whatever device Accelerate picks; N: N GPU processes
    cpu_procs: int = 0  # N: N CPU processes over gloo
    data_root: str | None = None
    download: bool = False
    quiet: bool = False
    evaluate: bool = True
    eval_n: int | None = None
    eval_batch: int = 256
    trust_code: bool = False
    spec_path: list[str] = dataclasses.field(default_factory=list)
    allow: list[str] = dataclasses.field(default_factory=list)
    strict: bool = False
    init_from: Path | None = None
    eval_extra: str | None = None  # --eval: attacks added to the spec's evaluate list


def check_options(opts: RunOptions) -> None:
    """Every option, before the spec is even read."""
    from advc.runtime.launch import launched, require_gpus

    if opts.gpus and opts.cpu_procs:
        raise UserError("--gpus and --cpu-procs exclude each other", where="advc run", hint="pick GPUs or CPU processes")
    if opts.gpus < 0 or opts.cpu_procs < 0:
        raise UserError("process counts must be positive", where="--gpus/--cpu-procs")
    if opts.eval_n is not None and opts.eval_n < 1:
        raise UserError("--eval-n must be at least 1", where="--eval-n")
    if opts.eval_batch < 1:
        raise UserError(f"--eval-batch must be at least 1, got {opts.eval_batch}", where="--eval-batch")
    if opts.init_from is not None and not Path(opts.init_from).is_file():
        raise UserError("no such checkpoint", where=str(opts.init_from), hint="name a .safetensors file of a run")
    if opts.init_from is not None and opts.resume:
        raise UserError("--init-from starts a new run; --resume continues one", where="--init-from")
    if opts.gpus and not launched():
        require_gpus(opts.gpus)


def compile_run(opts: RunOptions, warnings_to=None):
    """The checked program and its generated module for a run; its warnings are written to
    ``warnings_to`` (stderr by default), or are an error with --strict."""
    import sys

    from advc.compiler.check import check_file
    from advc.compiler.codegen import generate
    from advc.compiler.lower import eval_text

    overrides = list(opts.overrides)
    program = check_file(opts.spec, overrides or None, spec_path=opts.spec_path)
    if opts.eval_extra:
        current = " ".join(eval_text(e) for e in program.evaluate)
        overrides.append(f"evaluate={current} {opts.eval_extra}")
        program = check_file(opts.spec, overrides, spec_path=opts.spec_path)
    report_warnings(program, opts.allow, opts.strict, warnings_to if warnings_to is not None else sys.stderr)
    if program.train is None:
        raise UserError(f"objective '{program.name}' has no train block: advc run needs its data, model, epochs "
                        "and optim", where=str(opts.spec),
                        hint="add: train { data digits  model small_cnn  epochs 10  optim sgd(lr = 0.1) }")
    if program.train.user_model and not opts.trust_code:
        module = program.train.model.partition(":")[0]
        raise UserError(f"the spec names the model {program.train.model!r}, which imports and runs the module "
                        f"{module!r}", where=str(opts.spec),
                        hint="advc runs code a spec names only when you trust it: add --trust-code")
    return program, generate(program), overrides


def report_warnings(program, allow: list[str], strict: bool, stream) -> None:
    from advc.compiler.warn import CODES

    for code in allow:
        if code not in CODES:
            raise UserError(f"unknown warning '{code}'", where="--allow", hint=f"warnings: {', '.join(CODES)}")
    shown = [w for w in program.warnings if w.code not in allow]
    for w in shown:
        print(w.rendered, file=stream)
    if strict and shown:
        raise UserError(f"{len(shown)} warning(s) with --strict", where=program.file,
                        hint="fix them, or silence one with --allow CODE")


def default_out(program, overrides: list[str]) -> Path:
    """``runs/<spec>`` -- plus the overrides, so runs of other settings do not collide."""
    slug = "-".join(re.sub(r"[^A-Za-z0-9.=_-]+", "", o.replace("train.", "").replace(" ", "")) for o in overrides)
    return Path("runs") / (program.name + (f"-{slug[:80]}" if slug else ""))


def run(opts: RunOptions) -> int:
    """``advc run``: returns an exit code."""
    from advc.compiler.vocabulary.clauses import MIXED_PRECISION
    from advc.runtime.folders import LOCK_ENV, check_out, lock_run_folder
    from advc.runtime.launch import launch, launched

    check_options(opts)
    program, source, overrides = compile_run(opts)
    from advc.runtime.loop import RunArgs  # torch: only once the spec is known to be good
    t = program.train
    n = max(opts.gpus, opts.cpu_procs)
    if t.precision == "fp16" and not _cuda(opts):
        raise UserError("fp16 mixed precision needs a GPU", where="train.precision", hint="use precision bf16 or fp32 on the CPU")
    if t.sync_bn and opts.cpu_procs > 1:
        raise UserError("sync_bn needs GPUs (torch's SyncBatchNorm does not run on the CPU)", where="train.sync_bn",
                        hint="set train.sync_bn=false for --cpu-procs")
    out = Path(opts.out) if opts.out is not None else default_out(program, opts.overrides)
    args = RunArgs(out=str(out.resolve()), resume=opts.resume, data_root=opts.data_root, download=opts.download,
                   eval_n=opts.eval_n, eval_batch=opts.eval_batch, no_eval=not opts.evaluate, quiet=opts.quiet,
                   cpu=opts.cpu_procs > 0, trust_code=opts.trust_code,
                   init_from=str(Path(opts.init_from).resolve()) if opts.init_from else None)
    if launched():  # already one of several processes (multi-node through accelerate launch -m advc run)
        return _in_process(program, source, out, args)
    check_out(out, resume=opts.resume)  # everything up to the lock only reads
    if opts.resume:
        _check_resume(out, program)
    if n > 1:
        _preflight(program, opts)  # fail here, in one process, with one line
    created = not out.exists()
    lock = lock_run_folder(out)
    before = FolderState(out) if opts.resume else None
    try:
        write_records(out, program, source, overrides, opts)
        os.environ[LOCK_ENV] = str(out.resolve())
        try:
            if n > 1:
                code = launch(out / "objective.py", args.to_argv(), n, cpu=opts.cpu_procs > 1,
                              mixed_precision=MIXED_PRECISION[t.precision])
            else:
                code = _in_process(program, source, out, args)
        finally:
            os.environ.pop(LOCK_ENV, None)
    except BaseException:
        _remove_if_untrained(out, created)
        if before is not None:
            before.restore_if_untrained()
        raise
    finally:
        lock.release()
    if code:
        _remove_if_untrained(out, created)
        if before is not None:
            before.restore_if_untrained()
    return code


def _cuda(opts: RunOptions) -> bool:
    import torch

    return not opts.cpu_procs and torch.cuda.is_available()


def _in_process(program, source: str, out: Path, args) -> int:
    from advc.api import import_generated

    module = import_generated(source, str(out / "objective.py"), f"advc_run_{program.name}_{program.spec_hash[:12]}")
    module.main(args)
    return 0


def _check_resume(out: Path, program) -> None:
    """The checkpoint to resume belongs to this training (before anything is rewritten)."""
    from advc.compiler.identity import training_id
    from advc.runtime.checkpoint import load_checkpoint
    from advc.runtime.loop import check_training_state

    path = out / "checkpoints" / "last.safetensors"
    _, _, extra = load_checkpoint(path)
    check_training_state(extra, path, training_id=training_id(program), epochs=program.train.epochs)


def _preflight(program, opts: RunOptions) -> None:
    """Load the data and build the model once before starting several processes."""
    from advc.runtime.data import load_dataset
    from advc.runtime.loop import seed_everything, validation_size
    from advc.runtime.models import build_model, check_model_fits

    t = program.train
    args = dict(t.data_args)
    root = opts.data_root if opts.data_root is not None else args.pop("root", None)
    download = bool(opts.download or args.pop("download", False))
    data = load_dataset(t.data, root, download, **args)
    validation_size(t.val, int(data.x_train.shape[0]))
    seed_everything(t.seed)
    model = build_model(t.model, in_channels=data.in_channels, num_classes=data.num_classes,
                        trust_code=opts.trust_code, **dict(t.model_args))
    check_model_fits(model, data.in_channels, data.image_size, data.num_classes, model_name=t.model,
                     dataset_name=data.name)


def write_records(out: Path, program, source: str, overrides: list[str], opts: RunOptions) -> None:
    """What a run folder says about its run: the spec files, run.json, resolved.json, the code."""
    from advc import __version__
    from advc.compiler.identity import REPLICATE, digest, settings_record, training_id
    from advc.files import atomic_write_text

    record = settings_record(program)
    eps = program.threat.eps
    record["eval.n"] = opts.eval_n if opts.eval_n is not None else "all"
    record["eval.eps"] = eps.const if eps.const is not None else eps.text
    copies, files = {}, []
    for path, how in program.files:
        name = Path(path).name
        while name in copies.values():
            name = f"{len(copies)}-{Path(path).name}"
        copies[path] = name
        text = dict(program.texts)[path]
        atomic_write_text(out / "spec" / name, text)
        files.append({"path": path, "found": how, "copy": f"spec/{name}"})
    previous = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((out / RUN_RECORD).read_text(encoding="utf-8"))
    history = list(previous.get("history", [])) if isinstance(previous, dict) else []
    history.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "epochs": program.train.epochs,
                    "overrides": overrides, "resume": opts.resume, "advc_version": __version__,
                    "processes": max(opts.gpus, opts.cpu_procs, 1)})
    run_record = {
        "format": "advc-run", "version": 1, "spec": program.name, "entry": program.files[-1][0], "files": files,
        "overrides": overrides, "seed": program.train.seed, "spec_hash": program.spec_hash,
        "training_id": training_id(program), "experiment_id": digest(record, REPLICATE)[:16],
        "experiment": {k: v for k, v in record.items() if k not in REPLICATE}, "advc_version": __version__,
        "trust_code": opts.trust_code, "init_from": str(opts.init_from) if opts.init_from else None, "history": history,
    }  # fmt: skip
    atomic_write_text(out / RUN_RECORD, json.dumps(run_record, indent=2, ensure_ascii=False) + "\n")
    resolved = {"note": "a record for people: advc never reads this file back", "settings": record,
                "warnings": [w.message for w in program.warnings]}
    atomic_write_text(out / "resolved.json", json.dumps(resolved, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "objective.py", source)


def read_run_record(run_dir: Path, *, rebuild: bool = True) -> dict:
    """A run folder's ``run.json``, checked field by field: the experiment ``advc table`` groups by,
    and (``rebuild``) which spec files and overrides ``advc eval`` compiles; missing or damaged is one line."""
    from advc.runtime.folders import EDITED, RECORD_MAX_BYTES, read_folder_file

    path = Path(run_dir) / RUN_RECORD
    if not path.exists() and not path.is_symlink():
        raise UserError(NOT_A_RUN, where=str(run_dir), hint=NOT_A_RUN_HINT)
    try:
        data = json.loads(read_folder_file(Path(run_dir), RUN_RECORD, RECORD_MAX_BYTES))
    except (ValueError, RecursionError) as exc:
        raise UserError(f"run.json is unreadable: {exc}", where=str(path), hint=EDITED) from None

    def bad(field: str, why: str) -> UserError:
        return UserError(f"run.json field '{field}' {why}", where=str(path), hint=EDITED)

    if not isinstance(data, dict) or data.get("format") != "advc-run":
        raise bad("format", "is not 'advc-run'")
    fields = [("experiment_id", str), ("experiment", dict), ("advc_version", str)]
    if rebuild:
        fields += [("entry", str), ("files", list), ("overrides", list), ("training_id", str), ("spec_hash", str)]
    for field, kind in fields:
        if not isinstance(data.get(field), kind) or (kind is str and not data[field]):
            raise bad(field, f"must be a {'non-empty string' if kind is str else kind.__name__}")
    if not isinstance(data.get("seed"), int) or isinstance(data["seed"], bool):
        raise bad("seed", "must be an integer")
    if rebuild and not all(isinstance(o, str) for o in data["overrides"]):
        raise bad("overrides", "must be a list of key=value strings")
    experiment = data["experiment"]
    if not isinstance(experiment.get("objective"), str) or any(isinstance(v, (dict, list)) for v in experiment.values()):
        raise bad("experiment", "must be an object of plain settings naming the objective")
    for item in data["files"] if rebuild else ():
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or not isinstance(item.get("copy"), str):
            raise bad("files", "must list {path, copy} entries")
        copy = Path(item["copy"])
        if copy.is_absolute() or ".." in copy.parts or copy.parts[:1] != ("spec",) or len(copy.parts) < 2:
            raise bad("files", f"names a copy outside the folder's spec/: {item['copy'][:200]!r}")
    if rebuild and data["entry"] not in {item["path"] for item in data["files"]}:  # never a spec from the disk
        raise bad("entry", "names no file the folder keeps a copy of")
    return data


class FolderState:
    """A run folder as ``--resume`` found it: a resume that fails before it writes a checkpoint (a
    forged or damaged checkpoint, data gone missing, a NaN in the first resumed epoch) leaves the
    folder as it was -- the records it rewrote put back, the files it added removed."""

    RECORDS = ("run.json", "resolved.json", "objective.py", "metrics.jsonl", "metrics.csv")

    def __init__(self, out: Path):
        self.out = out
        self.entries = set(_entries(out))
        self.saved = {}
        for rel in [*self.RECORDS, *(f"spec/{p.name}" for p in sorted((out / "spec").glob("*")))]:
            path = out / rel
            if path.is_symlink():
                self.saved[rel] = ("link", os.readlink(path))
            elif path.is_file():
                self.saved[rel] = ("file", path.read_bytes())
        self.checkpoints = _checkpoint_stamps(out)

    def restore_if_untrained(self) -> None:
        if _checkpoint_stamps(self.out) != self.checkpoints:
            return  # it trained on: what it wrote belongs to the run now
        for rel, (kind, value) in self.saved.items():
            path = self.out / rel
            tmp = path.with_name(f".{path.name}.restore")
            with contextlib.suppress(OSError):
                if kind == "link":
                    tmp.unlink(missing_ok=True)
                    tmp.symlink_to(value)
                else:
                    tmp.write_bytes(value)
                os.replace(tmp, path)
        for rel in sorted(set(_entries(self.out)) - self.entries, key=len, reverse=True):
            path = self.out / rel
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _entries(out: Path) -> list[str]:
    """Every file, folder and link under ``out`` (links not followed), relative to it."""
    found = []
    for top, dirs, files in os.walk(out):
        found += [str((Path(top) / name).relative_to(out)) for name in dirs + files]
    return found


def _checkpoint_stamps(out: Path) -> dict[str, tuple[int, int, int]]:
    """Which checkpoint files there are and which write each is (a save replaces the file)."""
    stamps = {}
    for path in sorted((out / "checkpoints").glob("*.safetensors")):
        with contextlib.suppress(OSError):
            st = path.lstat()
            stamps[path.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return stamps


def _remove_if_untrained(out: Path, created: bool) -> None:
    """A run that failed before its first checkpoint leaves no folder it created behind."""
    if created and out.is_dir() and not (out / "checkpoints" / "last.safetensors").exists():
        shutil.rmtree(out, ignore_errors=True)
