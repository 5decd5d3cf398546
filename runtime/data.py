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
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advc.errors import UserError

__all__ = [
    "DATA_ROOT_ENV",
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


def _validate(name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, split: str) -> None:
    """Reject data the training loop would silently mis-handle."""
    where = f"{name} ({split})"
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise UserError(
            f"images shaped {tuple(x.shape)} do not match labels shaped {tuple(y.shape)}",
            where=where,
            hint="the files may be damaged; download them again",
        )
    if x.shape[0] == 0:
        raise UserError("the split holds no images", where=where, hint="check the data folder")
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


def _make(name: str, xtr, ytr, xte, yte, num_classes: int, classes: list[str]) -> Dataset:
    ytr = torch.as_tensor(np.asarray(ytr), dtype=torch.int64).reshape(-1)
    yte = torch.as_tensor(np.asarray(yte), dtype=torch.int64).reshape(-1)
    _validate(name, xtr, ytr, num_classes, "train")
    _validate(name, xte, yte, num_classes, "test")
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


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild the CIFAR archives' dicts and numpy arrays and nothing else.

    The archives are pickles, and a pickle from a data folder could run arbitrary code when
    loaded; refusing every global except the numpy array constructors makes loading one safe.
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
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core"):  # numpy 2 moved the module; avoid its shim warning
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_pickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"cannot read {name} file {path.name}: {exc}",
            where=str(path),
            hint="the file is damaged or not a CIFAR archive; download it again",
        ) from exc
    if not isinstance(obj, dict):
        raise UserError(
            f"{path.name} is not a CIFAR batch (no dict inside)",
            where=str(path),
            hint="download the archive again",
        )
    return obj


def _field(batch: dict, key: bytes, path: Path, name: str):
    try:
        return batch[key]
    except KeyError:
        raise UserError(
            f"{path.name} lacks the field {key.decode()!r}",
            where=str(path),
            hint=f"this is not a {name} archive file; download it again",
        ) from None


def _cifar_images(batch: dict, path: Path, name: str) -> np.ndarray:
    data = np.asarray(_field(batch, b"data", path, name))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(
            f"{path.name} holds data shaped {data.shape}, expected (N, 3072)",
            where=str(path),
            hint="download the archive again",
        )
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)


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

    def read(fname: str) -> tuple[np.ndarray, list]:
        batch = _read_pickle(folder / fname, name)
        return _cifar_images(batch, folder / fname, name), list(
            _field(batch, label_key, folder / fname, name)
        )

    parts = [read(f) for f in train]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    xte, yte = read(test)
    meta_dict = _read_pickle(folder / meta, name)
    classes = [
        c.decode() if isinstance(c, bytes) else str(c)
        for c in _field(meta_dict, names_key, folder / meta, name)
    ]
    return _make(name, _to_float(xtr), ytr, _to_float(xte), yte, num_classes, classes)


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
    """SVHN's ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 means digit 0, as in torchvision)."""
    from scipy.io import loadmat

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

    def read(fname: str) -> tuple[torch.Tensor, np.ndarray]:
        path = folder / fname
        try:
            mat = loadmat(str(path))
            images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).astype(np.int64)
        except Exception as exc:  # scipy raises ValueError, MatReadError, KeyError, ...
            raise UserError(
                f"cannot read {fname}: {exc}", where=str(path), hint="download the file again"
            ) from exc
        if images.ndim != 4 or images.shape[2] != 3:
            raise UserError(
                f"{fname} holds images shaped {images.shape}, expected (32, 32, 3, N)",
                where=str(path),
                hint="download the file again",
            )
        labels = np.where(labels == 10, 0, labels).reshape(-1)
        return _to_float(np.transpose(images, (3, 2, 0, 1)).astype(np.uint8)), labels

    (xtr, ytr), (xte, yte) = read(files[0]), read(files[1])
    return _make("svhn", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)])


_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def read_mnist(root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """MNIST through torchvision (which reads ``<root>/MNIST/raw/*-ubyte``)."""
    from torchvision.datasets import MNIST

    root = _resolve_root(root)
    raw = root / "MNIST" / "raw"
    if not download and not all((raw / f).is_file() for f in _MNIST_FILES):
        raise _missing("mnist", raw, [f"MNIST/raw/{f}" for f in _MNIST_FILES])

    def read(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            ds = MNIST(str(root), train=train, download=download)
        except Exception as exc:  # download failures, damaged idx files
            raise UserError(
                f"cannot {'download' if download else 'read'} mnist: {exc}",
                where=str(raw),
                hint="check the network connection, or put the idx files there by hand",
            ) from exc
        return _to_float(ds.data.unsqueeze(1)), ds.targets

    (xtr, ytr), (xte, yte) = read(True), read(False)
    return _make("mnist", xtr, ytr, xte, yte, 10, [str(i) for i in range(10)])


# --------------------------------------------------------------------------------------------
# image folder


def _read_image_split(folder: Path, class_to_idx: dict[str, int] | None):
    """All images of ``folder/<class>/*`` as uint8 arrays, plus labels and the class list."""
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
    for path, idx in ds.samples:  # loading once, not a hot path
        try:
            with Image.open(path) as img:
                img.load()
                images.append(img.copy())
        except OSError as exc:
            raise UserError(
                f"cannot read image: {exc}", where=path, hint="remove or fix it"
            ) from exc
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
    tr_imgs, ytr, classes, mapping = _read_image_split(root / "train", None)
    te_imgs, yte, _, _ = _read_image_split(root / "test", mapping)
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

    return _make("imagefolder", stack(tr_imgs), ytr, stack(te_imgs), yte, len(classes), classes)


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
