"""Checkpoints: one safetensors file per checkpoint, written atomically, loaded without pickle.

A checkpoint ``<dir>/<name>.safetensors`` holds every tensor of the training state under a
prefix -- ``model.`` (the model's state dict), ``optim.`` (optimizer state such as momentum
buffers), ``rng.`` (torch's CPU and CUDA generator states), ``extra.`` (tensors the caller put
in ``extra``) -- and everything else as JSON in the safetensors header metadata under
``"advc"``: the optimizer's param_groups, the caller's ``extra`` (epoch, step, scheduler
state, metrics, ...), Python's ``random`` and numpy's global RNG states. Inside that JSON a
tensor is a placeholder ``{"__tensor__": "<key>"}``; a tuple is ``{"__tuple__": [...]}`` and
a dict with non-string keys (the optimizer's ``state`` is keyed by int) is
``{"__items__": [[key, value], ...]}``, so state dicts come back exactly as they went in and
``optimizer.load_state_dict`` continues training bit-identically.

Why this format: safetensors and JSON cannot execute code when read (``torch.load`` of a
pickle can), and a ``sha256`` over the JSON and all tensor bytes, stored beside it, turns a
truncated, edited or foreign file into one clear error instead of a strange resume.
``<name>.json`` beside the checkpoint is a human-readable copy of the JSON; loading ignores it.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, and ``os.replace`` puts them in place (then the folder is fsync'ed). A crash leaves
the old checkpoint or the new one, never a partial file; stray temporary files are ignored
by the loader and removed by the next save of the same name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from advc.errors import UserError

__all__ = [
    "FORMAT",
    "VERSION",
    "capture_rng_state",
    "checkpoint_digest",
    "checkpoint_path",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT = "advc-checkpoint"
VERSION = 1
_META_KEY, _DIGEST_KEY = "advc", "advc_sha256"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_RESERVED = frozenset({_TENSOR, _TUPLE, _ITEMS})
_SECTIONS = ("model", "optim", "extra", "rng")

TensorDict = dict[str, torch.Tensor]


def checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` with the ``.safetensors`` suffix added when it is missing."""
    p = Path(path)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


# --------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> tuple[TensorDict, dict]:
    """Every global RNG a training step may draw from: torch CPU (+ CUDA), ``random``, numpy.

    CUDA states are captured only when CUDA is already initialised: an untouched CUDA
    generator still holds its seed, which a resumed run sets again the same way.
    """
    tensors: TensorDict = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, state


def restore_rng_state(tensors: TensorDict, json_state: dict) -> None:
    """Put back what ``capture_rng_state`` captured (CUDA states only for devices present)."""
    try:
        if "torch_cpu" in tensors:
            torch.set_rng_state(tensors["torch_cpu"].to("cpu", torch.uint8))
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                if f"torch_cuda.{i}" in tensors:
                    torch.cuda.set_rng_state(tensors[f"torch_cuda.{i}"].to("cpu", torch.uint8), i)
        if "python" in json_state:
            version, internal, gauss = json_state["python"]
            random.setstate((int(version), tuple(int(v) for v in internal), gauss))
        if "numpy" in json_state:
            name, keys, pos, has_gauss, cached = json_state["numpy"]
            keys = np.asarray(keys, dtype=np.uint32)
            np.random.set_state((str(name), keys, int(pos), int(has_gauss), float(cached)))
    except (TypeError, ValueError, RuntimeError, LookupError) as exc:
        raise UserError(
            f"the saved random-number-generator state is invalid: {exc}",
            where="rng",
            hint="resume from another checkpoint, or start the run afresh",
        ) from exc


# --------------------------------------------------------------------------------------------
# encoding nested state into JSON + named tensors


class _Encoder:
    """Turns nested state into JSON, moving every tensor into a flat name -> tensor dict."""

    def __init__(self) -> None:
        self.tensors: TensorDict = {}
        self._storages: set[tuple[str, int]] = set()

    def encode(self, obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return {_TENSOR: self._add(obj, path)}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {_TUPLE: [self.encode(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not _RESERVED & obj.keys():
                return {k: self.encode(v, f"{path}.{k}") for k, v in obj.items()}
            return {_ITEMS: [[self.encode(k, path), self.encode(v, f"{path}.{k}")]
                             for k, v in obj.items()]}  # fmt: skip
        raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path})")

    def _add(self, t: torch.Tensor, path: str) -> str:
        key, n = path, 1
        while key in self.tensors:  # e.g. {"a.b": ..., "a": {"b": ...}}
            key, n = f"{path}#{n}", n + 1
        t = t.detach().to("cpu").contiguous()
        storage = (str(t.device), t.untyped_storage().data_ptr())
        if storage in self._storages or t.untyped_storage().nbytes() != t.nbytes:
            t = t.clone()  # safetensors refuses tensors that share memory
        self._storages.add((str(t.device), t.untyped_storage().data_ptr()))
        self.tensors[key] = t
        return key


def _decode(obj: Any, tensors: TensorDict, path: str) -> Any:
    """The inverse of ``_Encoder.encode``; a tensor placeholder must carry the name the encoder
    gives the tensor at its place (``path``, or ``path#n``), so an edited header cannot point one
    part of the state at another part's tensor (ValueError, KeyError, TypeError: unreadable)."""
    if isinstance(obj, list):
        return [_decode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    if obj.keys() == {_TENSOR}:
        key = obj[_TENSOR]
        own = isinstance(key, str) and (key == path or (key.startswith(f"{path}#") and key[len(path) + 1 :].isdigit()))
        if not own:
            raise ValueError(f"the tensor at {path} is named {key!r}")
        return tensors[key]
    if obj.keys() == {_TUPLE}:
        return tuple(_decode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj[_TUPLE]))
    if obj.keys() == {_ITEMS}:
        items = {}
        for k, v in obj[_ITEMS]:
            key = _decode(k, tensors, path)
            items[key] = _decode(v, tensors, f"{path}.{key}")
        return items
    return {k: _decode(v, tensors, f"{path}.{k}") for k, v in obj.items()}


def _digest(state_json: str, tensors: TensorDict) -> str:
    """sha256 over the JSON text and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(state_json.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform can open a directory, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-"


def _atomic_write(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` so that readers see either the old or the new file."""
    tmp = dest.with_name(f"{_temp_prefix(dest)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:  # disk full, permission: name the file it was for
            raise OSError(exc.errno, exc.strerror, str(dest)) from exc
        raise
    _fsync_dir(dest.parent)


def _remove_stale_temps(dest: Path) -> None:
    """Temp files a crashed save left behind (one writer per checkpoint name is assumed)."""
    for stale in dest.parent.glob(_temp_prefix(dest) + "*"):
        with contextlib.suppress(OSError):
            stale.unlink()


# --------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: dict,
    optimizer_state: dict | None,
    extra: dict,
    rng_state: tuple[TensorDict, dict] | None = None,
) -> None:
    """Write one checkpoint atomically (plus its human-readable ``.json`` copy).

    ``extra`` holds whatever else a resume needs (epoch, step, scheduler state, metrics...):
    JSON-able values, tuples and tensors, nested freely. ``rng_state`` defaults to the global
    RNGs captured now (``capture_rng_state``); it comes back as ``extra["rng"]`` on load,
    so ``"rng"`` is reserved in ``extra``.
    """
    if "rng" in extra:
        raise ValueError('"rng" is reserved in checkpoint extra (the RNG state is saved itself)')
    dest = checkpoint_path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    rng_tensors, rng_json = capture_rng_state() if rng_state is None else rng_state
    enc = _Encoder()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": enc.encode(dict(model_state), "model"),
        "optim": enc.encode(optimizer_state, "optim"),
        "rng": enc.encode(dict(rng_tensors), "rng"),
        "rng_state": enc.encode(rng_json, "rng_state"),
        "extra": enc.encode(dict(extra), "extra"),
    }
    state_json = json.dumps(state, separators=(",", ":"))
    metadata = {_META_KEY: state_json, _DIGEST_KEY: _digest(state_json, enc.tensors)}
    _remove_stale_temps(dest)
    _atomic_write(dest, st_save(enc.tensors, metadata=metadata))
    readable = dict(
        state, tensors={k: [str(t.dtype), list(t.shape)] for k, t in enc.tensors.items()}
    )
    json_dest = dest.with_suffix(".json")
    _remove_stale_temps(json_dest)
    _atomic_write(json_dest, (json.dumps(readable, indent=1) + "\n").encode())


def _unreadable(path: Path, why: str) -> UserError:
    return UserError(
        f"checkpoint {path} is unreadable or not an advc checkpoint: {why}",
        where=str(path),
        hint="resume from another checkpoint (best/last), or start the run afresh",
    )


def _read(path: Path) -> tuple[dict, TensorDict]:
    """The verified JSON state and the tensors of a checkpoint file (all on the CPU)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as exc:  # safetensors raises its own error types, OSError, ...
        raise _unreadable(path, f"{type(exc).__name__}: {exc}") from exc
    state_json = metadata.get(_META_KEY)
    if not isinstance(state_json, str):
        raise _unreadable(path, "no advc state in the safetensors header")
    if metadata.get(_DIGEST_KEY) != _digest(state_json, tensors):
        raise _unreadable(path, "checksum mismatch (the file was changed or damaged)")
    try:
        state = json.loads(state_json)
    except (ValueError, RecursionError) as exc:
        raise _unreadable(path, f"bad JSON state: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _unreadable(path, "the header does not describe an advc checkpoint")
    if state.get("version") != VERSION:
        raise _unreadable(path, f"format version {state.get('version')!r}, expected {VERSION}")
    return state, tensors


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict, dict | None, dict]:
    """Read a checkpoint: ``(model_state, optimizer_state, extra)``.

    ``extra`` is what was saved plus ``extra["rng"] = (tensors, json_state)`` for
    ``restore_rng_state(*extra["rng"])``. Model, optimizer and extra tensors are moved to
    ``map_location``; RNG tensors stay on the CPU, where torch wants them.
    """
    p = checkpoint_path(path)
    if not p.is_file():
        raise UserError(
            "checkpoint not found",
            where=str(p),
            hint="check the run folder, or start without --resume",
        )
    state, tensors = _read(p)
    moved = {k: t if k.startswith("rng.") else t.to(map_location) for k, t in tensors.items()}
    try:
        parts = {s: _decode(state[s], moved, s) for s in (*_SECTIONS, "rng_state")}
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise _unreadable(p, f"inconsistent state ({type(exc).__name__}: {exc})") from None
    model, optim, extra = parts["model"], parts["optim"], parts["extra"]
    if not all(isinstance(x, dict) for x in (model, extra, parts["rng"], parts["rng_state"])):
        raise _unreadable(p, "model state, rng or extra is not a mapping")
    if optim is not None and not isinstance(optim, dict):
        raise _unreadable(p, "optimizer state is not a mapping")
    extra["rng"] = (parts["rng"], parts["rng_state"])
    return model, optim, extra


def checkpoint_digest(path: str | os.PathLike) -> str:
    """The sha256 a checkpoint carries over its JSON state and tensors: which weights these are.

    Read from the header only; ``load_checkpoint`` is what verifies it against the content.
    """
    p = checkpoint_path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            digest = (f.metadata() or {}).get(_DIGEST_KEY)
    except Exception as exc:  # safetensors raises its own error types
        raise _unreadable(p, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(digest, str):
        raise _unreadable(p, "no advc digest in the safetensors header")
    return digest
