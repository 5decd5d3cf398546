"""Data sets as device-resident tensors, plus batching and augmentation that stay on the device.

Why tensors and not a ``torch.utils.data.DataLoader``: adversarial training spends its time in
the attack (K forward/backward passes per batch), the data sets it is run on (CIFAR, SVHN,
MNIST, digits) fit in memory many times over, and a worker-process loader only adds start-up
time, non-determinism across process counts and host-to-device copies. So a data set is read
ONCE into ``x`` (float32 in [0, 1], N x C x H x W) and ``y`` (int64), moved to the device once,
and batched, shuffled and augmented there with plain tensor indexing.

On-disk formats are the real ones (the CIFAR python pickles, SVHN ``.mat`` files, MNIST idx
files, a folder of images), so tests build tiny files in those formats instead of mocking
loaders. torchvision is used to *download* archives and to read MNIST / image folders; the
CIFAR pickles and SVHN ``.mat`` files are read by the small readers below, which do exactly
what torchvision does minus the per-image PIL round trip (and, for SVHN, minus the md5
check that would reject anything but the official file).

A data folder is often someone else's, so it is a trust boundary: every reader checks what a
file holds before converting anything, and refuses what it would otherwise coerce. Pixels must
be uint8 in the file (float or int pixels are refused, never cast), labels integers in range
(floats, strings, None and booleans are refused, never truncated; SVHN's official labels are
MATLAB doubles, so whole-valued doubles are accepted there and only there), class names one
per class, images and labels equal in number, no split empty, and at least two classes in the
training split (a classifier on one class scores 100 % and means nothing). Each refusal is
one ``UserError`` naming the data set, the file and the field:
``error: cifar10 file data_batch_1: field 'labels' holds floats (2.5), expected integer class
labels (<path>) -- hint: ...``.

Memory is bounded before anything large is built:

* a CIFAR pickle may not decode to more array bytes than the file itself holds (a uint8 pixel
  costs at least one byte in a pickle). The restricted unpickler charges every array, numpy
  scalar and ``bytes`` it builds against the file size *before* building it, so memo
  references (one row referenced 20 000 times in an 86 KB file) cannot multiply a small file,
  and a field that is not already a uint8 array is refused before ``np.asarray`` could
  expand it;
* ``ADVC_DATA_MAX_BYTES`` (default 4 GiB) caps the image bytes, as stored (uint8), that one
  data set may decode, all its files together, and the size of any one file read. It is
  checked from file sizes and headers (``.mat`` variable headers, image headers) before the
  data is read. Raise it for larger data sets; the float32 copy in memory is four times this.
"""

from __future__ import annotations

import difflib
import math
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advc.errors import UserError

try:  # numpy 2 moved numpy.core to numpy._core (the old name still works, with a warning)
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar

__all__ = [
    "DATA_ROOT_ENV",
    "MAX_BYTES_ENV",
    "Dataset",
    "DeviceLoader",
    "RandomCropFlip",
    "augment_batch",
    "load_dataset",
    "split_validation",
]

#: Environment variable naming the data root when a caller passes ``root=None``.
DATA_ROOT_ENV = "ADVC_DATA"
_DEFAULT_ROOT = "data"
#: Environment variable capping the image bytes (uint8, as stored) one data set may decode.
MAX_BYTES_ENV = "ADVC_DATA_MAX_BYTES"
_DEFAULT_MAX_BYTES = 4 * 2**30


@dataclass
class Dataset:
    """A whole data set in memory: ``x_*`` float32 in [0, 1] (N x C x H x W), ``y_*`` int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    classes: list[str] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.x_train.shape[2]), int(self.x_train.shape[3])

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with all four tensors on ``device`` (moved once, up front)."""
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
            list(self.classes),
        )


# --------------------------------------------------------------------------------------------
# helpers shared by the readers


def _resolve_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV, _DEFAULT_ROOT)
    return Path(root).expanduser()


def _missing(name: str, searched: Path, expected: list[str]) -> UserError:
    return UserError(
        f"data set {name!r} not found: expected {', '.join(expected)}",
        where=str(searched),
        hint=f"pass --download to fetch it, or set the data root (--data-root or ${DATA_ROOT_ENV}) "
        "to the folder that holds it",
    )


def _to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [0, 1], converted once."""
    t = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    return t.to(torch.float32).div_(255.0)


def _file_error(
    name: str, path: Path, problem: str, *, hint: str, field: str | None = None, shown: str = ""
) -> UserError:
    """One line naming the data set, the file (``shown``, else its name) and the field at fault."""
    subject = f"{name} file {shown or path.name}"
    message = f"{subject}: field {field!r} {problem}" if field else f"{subject}: {problem}"
    return UserError(message, where=str(path), hint=hint)


def _reporter(
    name: str, path: Path, hint: str, field: str | None = None
) -> Callable[[str], UserError]:
    """``problem -> UserError`` for one file (and field): what the checks below raise."""
    return lambda problem: _file_error(name, path, problem, field=field, hint=hint)


def _short(value: str | bytes) -> str:
    """The repr of a string cut to 24 characters (the cut is made before ``repr`` copies it)."""
    return repr(value[:24]) + ("..." if len(value) > 24 else "")


def _describe(value: object) -> str:
    """What a field holds, for an error message: "a string ('cat')", "a (2, 3) float64 array"."""
    if isinstance(value, _PickledArray):
        if value.array is None:
            return "a numpy array without data"
        value = value.array
    if value is None:
        return "None"
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({bool(value)})"
    if isinstance(value, (int, np.integer)):
        return f"an int ({int(value)})"
    if isinstance(value, (float, np.floating)):
        return f"a float ({float(value)!r})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, bytes):
        return f"a bytes string ({_short(value)})"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, np.ndarray):
        return f"a {value.shape} {value.dtype} array"
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} tensor"
    return f"a {type(value).__name__}"


def _kind(item: object) -> str:
    """What one element of a label or name list is, plural, with the element as the example."""
    if isinstance(item, _PickledArray):
        return "numpy arrays"
    if item is None:
        return "None"
    if isinstance(item, (bool, np.bool_)):
        return f"booleans ({bool(item)})"
    if isinstance(item, (int, np.integer)):
        return f"ints ({int(item)})"
    if isinstance(item, (float, np.floating)):
        return f"floats ({float(item)!r})"
    if isinstance(item, (complex, np.complexfloating)):
        return f"complex numbers ({complex(item)!r})"
    if isinstance(item, (str, bytes, np.str_, np.bytes_)):
        return f"strings ({_short(item.item() if isinstance(item, np.generic) else item)})"
    if isinstance(item, np.ndarray):
        return f"{item.dtype} arrays"
    return f"{type(item).__name__} objects"


def _first(values: np.ndarray, bad: np.ndarray) -> object:
    """The first element of ``values`` where ``bad`` holds, as a plain Python value."""
    return values.reshape(-1)[int(np.argmax(bad.reshape(-1)))].item()


def _class_labels(
    value: object, fail: Callable[[str], UserError], lo: int, hi: int, *, whole_floats: bool = False
) -> np.ndarray:
    """Integer class labels in ``[lo, hi)`` as int64, checked before anything is converted.

    Accepted: a list of Python ints (numpy integer scalars too) or an integer numpy array.
    Floats, strings, None and booleans are refused, never truncated; ``whole_floats`` admits
    whole-valued floats (SVHN's official labels are MATLAB doubles). Elements are checked one
    by one before ``np.asarray``, so a list cannot smuggle in arrays for numpy to expand.
    """
    span = f"[{lo}, {hi})"
    if isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
                raise fail(f"holds {_kind(item)}, expected integer class labels")
            if not lo <= item < hi:
                raise fail(f"holds {int(item)}, but labels must lie in {span}")
        return np.asarray(value, dtype=np.int64)
    if not isinstance(value, np.ndarray):
        raise fail(f"holds {_describe(value)}, expected a list of integer class labels")
    if value.dtype.kind == "O":
        return _class_labels(value.reshape(-1).tolist(), fail, lo, hi, whole_floats=whole_floats)
    flat = value.reshape(-1)
    if flat.dtype.kind == "f" and whole_floats:
        broken = ~np.isfinite(flat) | (flat != np.floor(flat))
        if broken.any():
            raise fail(f"holds {_first(flat, broken)!r}, expected whole-number class labels")
    elif flat.dtype.kind not in "iu":
        if flat.size == 0:
            raise fail(f"holds {_describe(value)}, expected integer class labels")
        raise fail(f"holds {_kind(flat[0])}, expected integer class labels")
    outside = (flat < lo) | (flat >= hi)
    if outside.any():
        raise fail(f"holds {_first(flat, outside)}, but labels must lie in {span}")
    return flat.astype(np.int64)


def _uint8_images(
    value: object, fail: Callable[[str], UserError], layout: str, shape_ok: Callable[[tuple], bool]
) -> np.ndarray:
    """A uint8 image array of the documented layout, refused (never cast) otherwise."""
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and shape_ok(value.shape):
        return value
    raise fail(f"holds {_describe(value)}, expected a {layout} uint8 array")


def _max_bytes() -> int:
    """``$ADVC_DATA_MAX_BYTES`` as a positive byte count (default 4 GiB)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return _DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(
            f"{MAX_BYTES_ENV} must be a positive number of bytes, got {raw!r}",
            where=MAX_BYTES_ENV,
            hint=f"unset it for the default of {_DEFAULT_MAX_BYTES} bytes (4 GiB)",
        )
    return value


class _ImageBytes:
    """The image bytes one data set has decoded so far, held to ``$ADVC_DATA_MAX_BYTES``."""

    def __init__(self, name: str):
        self.name, self.limit, self.total = name, _max_bytes(), 0

    def _over(self, path: Path, what: str, shown: str) -> UserError:
        return _file_error(
            self.name, path, f"{what}, over the {MAX_BYTES_ENV} limit of {self.limit} bytes",
            hint=f"set {MAX_BYTES_ENV} higher if the data set really is this large", shown=shown,
        )  # fmt: skip

    def check_file(self, path: Path, shown: str = "") -> int:
        """Refuse a file too large to read at all, before opening it; returns its size."""
        size = path.stat().st_size
        if size > self.limit:
            raise self._over(path, f"the file is {size} bytes", shown)
        return size

    def add(self, path: Path, nbytes: int, shown: str = "") -> None:
        """Count ``nbytes`` of images from ``path``, before they are decoded where possible."""
        self.total += int(nbytes)
        if self.total > self.limit:
            raise self._over(path, f"its images bring the data set to {self.total} bytes", shown)


def _validate(
    name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, split: str, where: str = ""
) -> None:
    """Reject data the training loop would silently mis-handle (the gate every reader passes)."""
    where = where or f"{name} ({split})"
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise UserError(
            f"images shaped {tuple(x.shape)} do not match labels shaped {tuple(y.shape)}",
            where=where,
            hint="the files may be damaged; download them again",
        )
    if x.shape[0] == 0:
        raise UserError(
            f"{name} {split} split holds no images", where=where, hint="check the data folder"
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise UserError(
            f"labels must lie in [0, {num_classes}) but range over "
            f"[{int(y.min())}, {int(y.max())}]",
            where=where,
            hint="the files may be damaged or belong to another data set",
        )
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError(
            "pixel values must lie in [0, 1] after conversion",
            where=where,
            hint="the files may be damaged; download them again",
        )


def _make(
    name: str, xtr, ytr, xte, yte, num_classes: int, classes: list[str], source: str = ""
) -> Dataset:
    """The checked ``Dataset``; ``source`` (the data folder) is where split-level errors point."""
    ytr = torch.as_tensor(np.asarray(ytr), dtype=torch.int64).reshape(-1)
    yte = torch.as_tensor(np.asarray(yte), dtype=torch.int64).reshape(-1)
    _validate(name, xtr, ytr, num_classes, "train", source)
    _validate(name, xte, yte, num_classes, "test", source)
    present = torch.unique(ytr)
    if present.numel() < 2:
        only = int(present[0])
        label = f"{only} ({classes[only]!r})" if only < len(classes) else str(only)
        raise UserError(
            f"{name} training split holds only class {label}, expected at least 2 classes",
            where=source or f"{name} (train)",
            hint="a classifier trained on one class scores 100 % without learning anything; "
            "check that every training file is there and complete",
        )
    return Dataset(name, xtr, ytr, xte, yte, num_classes, classes)


# --------------------------------------------------------------------------------------------
# digits (embedded)


def read_digits(root: str | os.PathLike | None = None, download: bool = False, *, test: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits: the data set that needs no files and no network.

    ``test``: the fraction of the 1797 images held out as the test split (stratified, fixed seed).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    xtr, xte, ytr, yte = train_test_split(
        images, bunch.target, test_size=test, random_state=0, stratify=bunch.target
    )
    classes = [str(c) for c in bunch.target_names]
    return _make("digits", _gray(xtr), ytr, _gray(xte), yte, 10, classes)


def _gray(images: np.ndarray) -> torch.Tensor:
    """N x H x W float array -> N x 1 x H x W float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the python pickle archives, read directly


class _Forged(pickle.UnpicklingError):
    """A pickle asked for more array memory than its file holds (memo references, forgery)."""


class _NdarrayName:
    """What the name ``numpy.ndarray`` resolves to inside a CIFAR pickle.

    Real array pickles only pass it to ``_reconstruct``; calling ``numpy.ndarray(shape)``
    directly would allocate any size the pickle names, so this stand-in cannot be called.
    """

    __slots__ = ()


class _PickledArray:
    """Stands for one numpy array while a CIFAR pickle loads, and builds it after a size check.

    An array pickle is ``_reconstruct(ndarray, (0,), b'b')`` followed by ``__setstate__((1,
    shape, dtype, fortran, raw))``; the state is checked and charged to the file's budget
    before numpy sees it. ``_read_pickle`` swaps the built ``array`` in for the stand-in.
    """

    __slots__ = ("_charge", "array")

    def __init__(self, charge: Callable[[str, int], None]):
        self._charge, self.array = charge, None

    def __setstate__(self, state) -> None:
        # (version, shape, dtype, is_fortran, raw), or the same without the version
        ok = isinstance(state, tuple) and len(state) in (4, 5)
        shape, dtype = (state[-4], state[-3]) if ok else (None, None)
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise pickle.UnpicklingError("malformed numpy array state")
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("malformed numpy array state")
        self._charge("array", math.prod(shape) * dtype.itemsize)
        array = _np_reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__(state)
        self.array = array


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild the CIFAR archives' dicts and numpy arrays and nothing else.

    The archives are pickles, and a pickle from a data folder could run arbitrary code when
    loaded; refusing every global except the numpy array constructors makes loading one safe.
    Those constructors are wrapped so that every array, numpy scalar and ``bytes`` object the
    pickle builds is charged against ``limit`` (the file size) before it is built: an honest
    pickle stores every byte it decodes, so memo references cannot multiply a small file.
    """

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
            ("__builtin__", "bytes"),  # ... and empty bytes (only ``bytes()`` is let through)
            ("builtins", "bytes"),
        }
    )

    def __init__(self, file, limit: int):
        super().__init__(file, encoding="bytes")
        self._limit = limit
        self._spent = {"array": 0, "bytes": 0}

    def _charge(self, kind: str, nbytes: int) -> None:
        self._spent[kind] += nbytes
        if self._spent[kind] > self._limit:
            raise _Forged(f"{kind} data past {self._limit} bytes")

    def _reconstruct(self, subtype, shape, _typecode) -> _PickledArray:
        if subtype is not _NdarrayName or not isinstance(shape, tuple) or math.prod(shape) != 0:
            raise pickle.UnpicklingError("unexpected arguments to numpy's _reconstruct")
        return _PickledArray(self._charge)

    def _scalar(self, dtype, *args):
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("unexpected arguments to numpy's scalar")
        self._charge("array", dtype.itemsize)
        return _np_scalar(dtype, *args)

    def _encode(self, text, encoding="utf-8", errors="strict") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("unexpected arguments to _codecs.encode")
        self._charge("bytes", len(text))
        return text.encode("latin1", errors)

    @staticmethod
    def _empty_bytes(*args) -> bytes:
        if args:  # bytes(n) would allocate n bytes the file never held
            raise pickle.UnpicklingError("unexpected arguments to bytes()")
        return b""

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if name == "ndarray":
            return _NdarrayName
        if name == "dtype":
            return np.dtype
        wrapped = {
            "_reconstruct": self._reconstruct,
            "scalar": self._scalar,
            "encode": self._encode,
            "bytes": self._empty_bytes,
        }
        return wrapped[name]


def _read_pickle(path: Path, name: str, tally: _ImageBytes) -> dict:
    """One CIFAR pickle as a dict of its fields (arrays built, sizes and globals checked)."""
    size = tally.check_file(path)
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, size).load()
    except _Forged:
        raise _file_error(
            name, path, f"would decode to more data than its {size} bytes can hold",
            hint="the file is forged or damaged (a real CIFAR pickle stores every pixel it "
            "decodes); download the archive again",
        ) from None  # fmt: skip
    except Exception as exc:  # whatever a malformed pickle makes the unpickler raise
        raise _file_error(
            name, path, f"not a readable pickle ({type(exc).__name__}: {exc})",
            hint="the file is damaged or not a CIFAR archive; download it again",
        ) from exc  # fmt: skip
    if not isinstance(obj, dict):
        raise _file_error(
            name, path, f"holds {_describe(obj)}, expected a dict of fields",
            hint="the file is not a CIFAR batch; download the archive again",
        )  # fmt: skip
    return {k: v.array if isinstance(v, _PickledArray) else v for k, v in obj.items()}


def _field(batch: dict, key: bytes, path: Path, name: str):
    try:
        return batch[key]
    except KeyError:
        raise _file_error(
            name, path, "is missing", field=key.decode(),
            hint=f"this is not a {name} archive file; download it again",
        ) from None  # fmt: skip




_CIFAR_HINT = "the file is damaged or forged; download the archive again"


def _cifar_images(batch: dict, path: Path, name: str) -> np.ndarray:
    """``data``: uint8 rows of 3072 pixels (R, G, B planes of 32 x 32), as N x 3 x 32 x 32."""
    fail = _reporter(
        name, path,
        "CIFAR pixels are stored as uint8 (0..255) and advc does not convert them; "
        "download the archive again",
        "data",
    )  # fmt: skip
    data = _uint8_images(
        _field(batch, b"data", path, name), fail, "(N, 3072)",
        lambda s: len(s) == 2 and s[1] == 3 * 32 * 32,
    )  # fmt: skip
    if data.shape[0] == 0:
        raise fail("holds no images")
    return data.reshape(-1, 3, 32, 32)


def _cifar_labels(
    batch: dict, key: bytes, count: int, num_classes: int, path: Path, name: str
) -> np.ndarray:
    """The label field: one integer in ``[0, num_classes)`` per image."""
    fail = _reporter(name, path, _CIFAR_HINT, key.decode())
    value = _field(batch, key, path, name)
    labels = _class_labels(value, fail, 0, num_classes)
    if len(labels) != count:
        raise fail(f"holds {len(labels)} labels but field 'data' holds {count} images")
    return labels


def _class_names(meta: dict, key: bytes, num_classes: int, path: Path, name: str) -> list[str]:
    """The class-name field of the meta file: one str or bytes name per class."""
    fail = _reporter(name, path, _CIFAR_HINT, key.decode())
    value = _field(meta, key, path, name)
    expected = f"expected a list of {num_classes} class names"
    if not isinstance(value, (list, tuple)):
        raise fail(f"holds {_describe(value)}, {expected}")
    for item in value:
        if not isinstance(item, (str, bytes)):
            raise fail(f"holds {_kind(item)}, {expected}")
    if len(value) != num_classes:
        raise fail(f"holds {len(value)} names, {expected}")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in value]


def _find_folder(root: Path, base: str, files: list[str]) -> Path | None:
    """``root/base`` or ``root`` itself, whichever holds all ``files``."""
    for folder in (root / base, root):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _cifar(
    name: str,
    root: Path | None,
    download: bool,
    *,
    base,
    train,
    test,
    meta,
    label_key,
    names_key,
    num_classes,
    tv_class,
) -> Dataset:
    root = _resolve_root(root)
    files = [*train, test, meta]
    folder = _find_folder(root, base, files)
    if folder is None and download:
        _tv_download(name, lambda: tv_class(str(root), train=True, download=True))
        folder = _find_folder(root, base, files)
    if folder is None:
        raise _missing(name, root / base, [f"{base}/{f}" for f in files])
    tally = _ImageBytes(name)

    def read(fname: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / fname
        batch = _read_pickle(path, name, tally)
        images = _cifar_images(batch, path, name)
        labels = _cifar_labels(batch, label_key, len(images), num_classes, path, name)
        tally.add(path, images.nbytes)
        return images, labels

    parts = [read(f) for f in train]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read(test)
    classes = _class_names(
        _read_pickle(folder / meta, name, tally), names_key, num_classes, folder / meta, name
    )
    return _make(
        name, _to_float(xtr), ytr, _to_float(xte), yte, num_classes, classes, str(folder)
    )


def _tv_download(name: str, fetch: Callable[[], object]) -> None:
    """Run a torchvision download, turning network and integrity failures into one-line errors."""
    try:
        fetch()
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError, ...
        raise UserError(
            f"downloading {name} failed: {exc}",
            hint="check the network connection, or download the files by hand into the data root",
        ) from exc


def read_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR10

    return _cifar(
        "cifar10", root, download, base="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)], test="test_batch", meta="batches.meta",
        label_key=b"labels", names_key=b"label_names", num_classes=10, tv_class=CIFAR10,
    )  # fmt: skip


def read_cifar100(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR100

    return _cifar(
        "cifar100", root, download, base="cifar-100-python",
        train=["train"], test="test", meta="meta",
        label_key=b"fine_labels", names_key=b"fine_label_names", num_classes=100,
        tv_class=CIFAR100,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# SVHN (.mat) and MNIST (idx)


def read_svhn(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 means digit 0, as in torchvision).

    The official files are compressed MATLAB v5 files, so their size does not bound what they
    decode to: the variable headers are read first (``whosmat``) and checked -- uint8 images,
    one label per image, ``$ADVC_DATA_MAX_BYTES`` -- before ``loadmat`` decodes the data.
    ``whosmat`` inflates only the first blocks of a compressed variable to read its header: a
    constant ~270 MiB at zlib's densest (measured on a 2 MB file declaring 2.1 GB of pixels).
    """
    from scipy.io import loadmat, whosmat

    root = _resolve_root(root)
    files = ["train_32x32.mat", "test_32x32.mat"]
    folder = _find_folder(root, "svhn", files)
    if folder is None and download:
        from torchvision.datasets import SVHN

        for split in ("train", "test"):
            _tv_download("svhn", lambda s=split: SVHN(str(root), split=s, download=True))
        folder = _find_folder(root, "svhn", files)
    if folder is None:
        raise _missing("svhn", root, files)
    tally = _ImageBytes("svhn")
    hint = "SVHN files hold X, uint8 images shaped (32, 32, 3, N), and y, one label 1..10 per image (10 stands for digit 0); download the file again"  # fmt: skip
    layout = "(32, 32, 3, N)"

    def read(fname: str) -> tuple[torch.Tensor, np.ndarray]:
        path = folder / fname
        fail_x, fail_y = _reporter("svhn", path, hint, "X"), _reporter("svhn", path, hint, "y")
        tally.check_file(path)
        try:
            header = {var: (shape, kind) for var, shape, kind in whosmat(str(path))}
        except Exception as exc:  # scipy raises ValueError, MatReadError, NotImplementedError, ...
            raise _file_error(
                "svhn", path, f"not a readable .mat file ({type(exc).__name__}: {exc})",
                hint="download the file again",
            ) from exc  # fmt: skip
        for var in ("X", "y"):
            if var not in header:
                raise _file_error("svhn", path, "is missing", field=var, hint=hint)
        (xshape, xkind), (yshape, _) = header["X"], header["y"]
        if xkind != "uint8" or len(xshape) != 4 or tuple(xshape[:3]) != (32, 32, 3):
            raise fail_x(f"holds a {tuple(xshape)} {xkind} array, expected a {layout} uint8 array")
        n = xshape[3]
        if n == 0:
            raise fail_x("holds no images")
        if math.prod(yshape) != n:
            raise fail_y(f"holds {math.prod(yshape)} labels but field 'X' holds {n} images")
        tally.add(path, math.prod(xshape))
        try:
            mat = loadmat(str(path), variable_names=["X", "y"])
        except Exception as exc:  # the data behind a valid header may still be damaged
            raise _file_error(
                "svhn", path, f"not a readable .mat file ({type(exc).__name__}: {exc})",
                hint="download the file again",
            ) from exc  # fmt: skip
        images = _uint8_images(mat["X"], fail_x, layout, lambda s: s == (32, 32, 3, n))
        labels = _class_labels(mat["y"], fail_y, 1, 11, whole_floats=True)
        labels = np.where(labels == 10, 0, labels)
        return _to_float(np.transpose(images, (3, 2, 0, 1))), labels

    (xtr, ytr), (xte, yte) = read(files[0]), read(files[1])
    return _make("svhn", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)], str(folder))


_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def read_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """MNIST through torchvision (which reads ``<root>/MNIST/raw/*-ubyte``).

    torchvision parses the idx files -- or, when ``MNIST/processed/training.pt`` and
    ``test.pt`` both exist, ``torch.load``s those instead -- and what it returns is checked
    like any other reader's output: uint8 images (N, 28, 28) backed by as many bytes as they
    claim, integer labels in [0, 10), one per image.
    """
    from torchvision.datasets import MNIST

    root = _resolve_root(root)
    raw = root / "MNIST" / "raw"
    if not download and not all((raw / f).is_file() for f in _MNIST_FILES):
        raise _missing("mnist", raw, [f"MNIST/raw/{f}" for f in _MNIST_FILES])
    processed = root / "MNIST" / "processed"
    legacy = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
    tally = _ImageBytes("mnist")
    hint = "MNIST files hold uint8 images shaped (N, 28, 28) and one label 0..9 per image; download them again"  # fmt: skip

    def read(train: bool) -> tuple[torch.Tensor, np.ndarray]:
        prefix = "train" if train else "t10k"
        if legacy:  # where torchvision reads from, so that errors name the right file
            x_path = y_path = processed / ("training.pt" if train else "test.pt")
        else:
            x_path, y_path = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
        for path in (x_path, y_path):
            if path.is_file():  # (absent only before a download)
                tally.check_file(path)
        try:
            ds = MNIST(str(root), train=train, download=download)
        except Exception as exc:  # download failures, damaged idx files
            raise UserError(
                f"cannot {'download' if download else 'read'} mnist: {exc}",
                where=str(raw),
                hint="check the network connection, or put the idx files there by hand",
            ) from exc
        fail_x, fail_y = _reporter("mnist", x_path, hint), _reporter("mnist", y_path, hint)
        data, targets = ds.data, ds.targets
        if isinstance(data, torch.Tensor):
            stored = data.untyped_storage().nbytes()
            if data.numel() * data.element_size() > stored:  # a view repeating its storage
                raise fail_x(f"holds {data.numel()} pixels backed by only {stored} bytes")
            data = data.numpy()
        images = _uint8_images(data, fail_x, "(N, 28, 28)", lambda s: len(s) == 3 and s[1:] == (28, 28))  # fmt: skip
        if len(images) == 0:
            raise fail_x("holds no images")
        if isinstance(targets, torch.Tensor):
            targets = targets.numpy()
        labels = _class_labels(targets, fail_y, 0, 10)
        if len(labels) != len(images):
            raise fail_y(f"holds {len(labels)} labels but {x_path.name} holds {len(images)} images")
        tally.add(x_path, images.nbytes)
        return _to_float(images[:, None]), labels

    (xtr, ytr), (xte, yte) = read(True), read(False)
    return _make("mnist", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)], str(raw))


# --------------------------------------------------------------------------------------------
# image folder

#: PIL modes with 8 bits per channel: converting them to L or RGB never rescales a value.
_EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


def _read_image_split(
    folder: Path, class_to_idx: dict[str, int] | None, tally: _ImageBytes, root: Path
):
    """All images of ``folder/<class>/*`` as PIL images, plus labels and the class list.

    Each image's mode and size are read from its header and checked (8 bits per channel,
    ``$ADVC_DATA_MAX_BYTES``) before its pixels are decoded.
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder), loader=lambda p: p)  # we open the files ourselves below
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"no images found: {exc}",
            where=str(folder),
            hint="put images under <root>/train/<class>/ and <root>/test/<class>/",
        ) from exc
    mapping = class_to_idx or ds.class_to_idx
    unknown = sorted(set(ds.classes) - set(mapping))
    if unknown:
        raise UserError(
            f"test classes {unknown} do not appear in the training folder",
            where=str(folder),
            hint="use the same class folder names under train/ and test/",
        )
    images, labels, sizes = [], [], set()
    for name, idx in ds.samples:  # loading once, not a hot path
        path = Path(name)
        shown = path.relative_to(root).as_posix()
        try:
            with Image.open(path) as img:
                if img.mode not in _EIGHT_BIT_MODES:
                    raise _file_error(
                        "imagefolder", path,
                        f"holds mode {img.mode!r} pixels, expected 8 bits per channel "
                        "(modes L, RGB, RGBA, P, ...)",
                        hint="convert it to 8-bit RGB or grayscale; advc does not rescale pixels",
                        shown=shown,
                    )  # fmt: skip
                tally.add(path, img.size[0] * img.size[1] * len(img.getbands()), shown)
                img.load()
                images.append(img.copy())
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise _file_error(
                "imagefolder", path, f"not a readable image ({exc})",
                hint="remove or fix it", shown=shown,
            ) from exc  # fmt: skip
        labels.append(mapping[ds.classes[idx]])
        sizes.add(images[-1].size)
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise UserError(
            f"images must all share one size, found {len(sizes)} sizes ({shown})",
            where=str(folder),
            hint="resize the images to one size first",
        )
    return images, labels, ds.classes if class_to_idx is None else None, mapping


def read_imagefolder(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """``root/train/<class>/*.png|jpg`` and ``root/test/<class>/*``, all one size."""
    root = _resolve_root(root)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise UserError(
            "image folder data set not found: expected train/<class>/* and test/<class>/*",
            where=str(root),
            hint="set the data root to the folder that holds train/ and test/",
        )
    tally = _ImageBytes("imagefolder")
    tr_imgs, ytr, classes, mapping = _read_image_split(root / "train", None, tally, root)
    te_imgs, yte, _, _ = _read_image_split(root / "test", mapping, tally, root)
    if tr_imgs[0].size != te_imgs[0].size:
        raise UserError(
            f"train images are {tr_imgs[0].size} but test images are {te_imgs[0].size}",
            where=str(root),
            hint="resize the images to one size first",
        )
    gray = all(im.mode in ("1", "L") for im in tr_imgs + te_imgs)
    mode = "L" if gray else "RGB"

    def stack(imgs) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in imgs])
        arr = arr[:, None] if gray else arr.transpose(0, 3, 1, 2)
        return _to_float(arr)

    return _make(
        "imagefolder", stack(tr_imgs), ytr, stack(te_imgs), yte, len(classes), classes,
        str(root / "train"),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# registry and entry point

def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False, **params) -> Dataset:
    """Load a data set by name into CPU tensors (move it with ``Dataset.to`` once).

    The names and their parameters are advc's vocabulary (``advc.compiler.vocabulary.datasets``),
    which also names the reader of each; ``root`` is the data folder (``None``: ``$ADVC_DATA`` or
    ``./data``); ``digits`` needs none. ``download`` lets torchvision fetch missing archives.
    """
    from advc.compiler.vocabulary.datasets import DATASETS

    entry = DATASETS.get(name.lower())
    if entry is None:
        close = difflib.get_close_matches(name.lower(), list(DATASETS), n=3)
        raise UserError(
            f"unknown data set {name!r}" + (f"; did you mean {' or '.join(close)}?" if close else ""),
            where=name,
            hint=f"known data sets: {', '.join(DATASETS)}",
        )
    return globals()[entry.reader](root, download, **params)


def split_validation(
    x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold ``n_val`` random training samples out for model selection.

    The "best" checkpoint is chosen on this split, never on the test set. The permutation is
    drawn on the CPU from ``seed`` alone, so every process and every device gets the same split.
    """
    n = int(x.shape[0])
    if not 0 <= n_val < n:
        raise UserError(
            f"validation split of {n_val} samples does not fit {n} training samples",
            where="validation",
            hint=f"choose a validation size between 0 and {n - 1}",
        )
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen).to(x.device)
    val, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[val], y[val]


# --------------------------------------------------------------------------------------------
# augmentation


class RandomCropFlip:
    """Random crop with zero padding plus horizontal flip, for a whole batch at once.

    Split into ``sample`` (draw per-sample offsets and flip flags) and ``apply`` (one gather),
    so ``DeviceLoader`` can draw the parameters for a *global* batch and apply only this
    process's slice: every process count then sees the same augmented images.
    """

    def __init__(self, pad: int = 4, flip: bool = True):
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad, self.flip = int(pad), bool(flip)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row offsets, column offsets, flip mask) for ``n`` samples, drawn on the CPU."""
        hi = 2 * self.pad + 1
        oy = torch.randint(0, hi, (n,), generator=generator)
        ox = torch.randint(0, hi, (n,), generator=generator)
        if self.flip:
            flip = torch.randint(0, 2, (n,), generator=generator).bool()
        else:
            flip = torch.zeros(n, dtype=torch.bool)
        return oy.to(device), ox.to(device), flip.to(device)

    def apply(self, x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Crop every sample at its own offset (flipping where asked) with one indexing op."""
        oy, ox, flip = params
        b, c, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = oy[:, None] + torch.arange(h, device=x.device)  # B x H
        cols = ox[:, None] + torch.arange(w, device=x.device)  # B x W
        # flipping a crop = reading its columns backwards
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(x, self.sample(x.shape[0], generator, x.device))


def augment_batch(
    x: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip of a whole batch, on ``x``'s device.

    The random draws come from ``generator`` (a CPU generator; ``None`` uses torch's global
    one), so the result does not depend on the device. Use ``pad=1`` or no augmentation for
    images smaller than 16 px (digits are 8x8).
    """
    return RandomCropFlip(pad, flip)(x, generator)


# --------------------------------------------------------------------------------------------
# batching


def _seed_for(*parts: int) -> int:
    """A well-mixed 64-bit seed from integers (seed, epoch, stream, batch)."""
    entropy = [int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


_PERM_STREAM, _AUG_STREAM = 0, 1


class DeviceLoader:
    """Batches of device-resident tensors, sharded over processes without changing the math.

    ``batch_size`` is the GLOBAL batch. Every process draws the same permutation (seeded from
    ``(seed, epoch)``), cuts the same global batches, and keeps its contiguous shard
    ``rank`` of each (``torch.tensor_split``: shards differ by at most one sample). So N
    processes with global batch B see exactly the samples one process with batch B sees, and
    every process runs the same number of steps (a trailing shard may be empty when the last
    global batch is smaller than ``world_size``; use ``drop_last`` to avoid that).

    ``augment`` (optional) is either an object with ``sample(n, generator, device)`` and
    ``apply(x, params)`` (like ``RandomCropFlip``), whose parameters are drawn for the global
    batch and sliced, or any callable ``augment(x, generator=...)``, which is applied to the
    whole global batch before slicing. Either way the generator is seeded from
    ``(seed, epoch, batch index)``: augmentation is reproducible and independent of world size.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: Callable | None = None,
    ):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}", where="batch")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation (and augmentation draws) of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = int(self.x.shape[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _permutation(self) -> torch.Tensor:
        n = int(self.x.shape[0])
        if not self.shuffle:
            return torch.arange(n, device=self.x.device)
        gen = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, _PERM_STREAM))
        return torch.randperm(n, generator=gen).to(self.x.device)

    def _augment(self, idx: torch.Tensor, shard: torch.Tensor, b: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(_seed_for(self.seed, self.epoch, _AUG_STREAM, b))
        aug = self.augment
        if hasattr(aug, "sample") and hasattr(aug, "apply"):
            params = aug.sample(idx.numel(), gen, self.x.device)
            mine = [torch.tensor_split(p, self.world_size)[self.rank] for p in params]
            return aug.apply(self.x[shard], tuple(mine))
        full = aug(self.x[idx], generator=gen)
        return torch.tensor_split(full, self.world_size)[self.rank]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = self._permutation()
        for b in range(len(self)):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            shard = torch.tensor_split(idx, self.world_size)[self.rank]
            xb = self.x[shard] if self.augment is None else self._augment(idx, shard, b)
            yield xb, self.y[shard]


def write_cifar10_archive(root: str | os.PathLike, n_per_batch: int, *, seed: int = 0) -> Path:
    """Write random images in the real CIFAR-10 python layout under ``root`` (for timing and tests).

    The files are exactly what ``cifar-10-python.tar.gz`` unpacks to -- five training batches,
    a test batch and ``batches.meta``, protocol-2 pickles of dicts with bytes keys -- so they
    load through the same reader as the real data set. Returns the batches folder.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n_per_batch)],
            b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": n_per_batch, b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return folder
