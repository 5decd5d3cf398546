"""Data sets from tiny files in the real on-disk formats, augmentation and device batching."""

from __future__ import annotations

import functools
import io
import pickle
import struct
import tracemalloc
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advc.errors import UserError
from advc.runtime.data import (
    DeviceLoader,
    RandomCropFlip,
    augment_batch,
    load_dataset,
    split_validation,
)

# ---------------------------------------------------------------------------------------------
# writers of the real formats


def _dump(path, obj, protocol=2):
    """Protocol 2 is what the Python 2 era archives use; numpy arrays pickle as in them."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(root, n=3, seed=0, bad_label=False):
    """The layout of cifar-10-python.tar.gz: five training batches, a test batch, the meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        if bad_label and name == "test_batch":
            labels[0] = 10
        _dump(folder / name, {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        })  # fmt: skip
        written[name] = (data, labels)
    label_names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                   b"horse", b"ship", b"truck"]  # fmt: skip
    _dump(folder / "batches.meta", {
        b"num_cases_per_batch": n, b"label_names": label_names, b"num_vis": 3072
    })  # fmt: skip
    return written


def write_cifar100(root, n=4, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        _dump(folder / name, protocol=4, obj={
            b"filenames": [f"{i}.png".encode() for i in range(n)],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": data,
        })  # fmt: skip
        written[name] = (data, fine)
    _dump(folder / "meta", {
        b"fine_label_names": [f"class{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
    })  # fmt: skip
    return written


def write_idx(path, array):
    """MNIST's idx format: magic (dtype uint8, ndim), big-endian dims, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


# ---------------------------------------------------------------------------------------------
# loading


def test_digits_embedded_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data folder anywhere
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() == 1.0
    assert ds.num_classes == 10 and ds.in_channels == 1 and ds.image_size == (8, 8)
    assert ds.classes == [str(i) for i in range(10)]
    assert torch.bincount(ds.y_test, minlength=10).min() >= 35  # stratified split
    again = load_dataset("digits")
    assert torch.equal(again.x_test, ds.x_test) and torch.equal(again.y_train, ds.y_train)


def test_cifar10_from_real_pickle_layout(tmp_path):
    written = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    data = np.concatenate([d for d, _ in train])
    labels = [v for _, lab in train for v in lab]
    assert ds.y_train.tolist() == labels
    roundtrip = (ds.x_train * 255).round().to(torch.uint8)
    assert torch.equal(roundtrip, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    # R, G, B planes of 1024 bytes each, row-major: byte 1024 is green at (0, 0)
    assert ds.x_train[0, 1, 0, 0] * 255 == pytest.approx(float(data[0, 1024]))
    assert ds.y_test.tolist() == written["test_batch"][1]


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle wrote the
    official archives, instead of Python 3's ``_codecs.encode`` calls."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n))  # fmt: skip
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_cifar10_pickles_in_the_python2_numpy1_layout_load(tmp_path):
    # the official files name numpy.core.multiarray and hold the pixels as one Python 2 str
    written = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for name in ("data_batch_1", "batches.meta"):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        buf = io.BytesIO()
        _Python2Pickler(buf, protocol=2).dump(batch)
        raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"_codecs" not in raw
        (folder / name).write_bytes(raw)
    assert b"numpy.core.multiarray\n_reconstruct" in (folder / "data_batch_1").read_bytes()
    ds = load_dataset("cifar10", root=tmp_path)
    data, labels = written["data_batch_1"]
    assert torch.equal((ds.x_train[:3] * 255).round().to(torch.uint8), torch.from_numpy(data.reshape(-1, 3, 32, 32)))  # fmt: skip
    assert ds.y_train[:3].tolist() == labels and ds.classes[9] == "truck"


def test_cifar10_root_may_be_the_batches_folder(tmp_path):
    write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py")
    assert ds.x_train.shape[0] == 15


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=str(tmp_path))
    assert ds.num_classes == 100 and len(ds.classes) == 100 and ds.classes[3] == "class3"
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.y_train.tolist() == written["train"][1]
    roundtrip = (ds.x_test * 255).round().to(torch.uint8).reshape(4, -1)
    assert torch.equal(roundtrip, torch.from_numpy(written["test"][0]))


def test_missing_folder_names_path_and_files(tmp_path):
    where = tmp_path / "nowhere"
    with pytest.raises(UserError) as err:
        load_dataset("cifar10", root=where)
    text = err.value.render()
    assert str(where) in text and "data_batch_1" in text and "--download" in text


def test_missing_one_file_is_reported(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_labels_out_of_range_rejected(tmp_path):
    write_cifar10(tmp_path, bad_label=True)
    with pytest.raises(UserError, match=r"labels must lie in \[0, 10\)"):
        load_dataset("cifar10", root=tmp_path)


def test_damaged_or_hostile_pickle_rejected(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(UserError, match="data_batch_2"):
        load_dataset("cifar10", root=tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    _dump(folder / "data_batch_2", {b"data": Evil(), b"labels": []})
    with pytest.raises(UserError, match="refusing to load global"):
        load_dataset("cifar10", root=tmp_path)


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("cifar")
    assert "did you mean" in err.value.message and "cifar10" in err.value.message


def test_registry_lists_without_loading():
    from advc.compiler.vocabulary.datasets import DATASETS

    assert {"digits", "cifar10", "cifar100", "svhn", "mnist", "imagefolder"} <= set(DATASETS)
    entry = DATASETS["cifar100"]
    classes, channels, size = entry.classes, entry.channels, entry.size
    import advc.runtime.data as data

    assert (classes, channels, size) == (100, 3, 32)
    assert all(callable(getattr(data, e.reader)) for e in DATASETS.values())  # each names its reader
    assert DATASETS["digits"].size == 8


def test_mnist_idx_files_through_torchvision(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]))
    write_idx(raw / "t10k-images-idx3-ubyte", images[:2])
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 8]))
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)
    assert ds.y_train.tolist() == [0, 1, 2, 3, 9] and ds.y_train.dtype == torch.int64
    assert torch.equal((ds.x_train[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))


def test_mnist_missing(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path)


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)  # H x W x C x N, as shipped
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [5], [9]])})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[3], [10]])})
    ds = load_dataset("svhn", root=tmp_path)
    assert ds.x_train.shape == (4, 3, 32, 32) and ds.y_train.tolist() == [0, 1, 5, 9]
    assert ds.y_test.tolist() == [3, 0]
    assert ds.x_train[2, 1, 7, 3] * 255 == pytest.approx(float(x[7, 3, 1, 2]))


def _png(path, size, color, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_imagefolder_pngs(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", (6, 5), color)
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.x_train.shape == (4, 3, 5, 6) and ds.image_size == (5, 6)
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]
    assert torch.equal(ds.x_test[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(ds.x_test[1, :, 4, 5], torch.tensor([0.0, 0.0, 1.0]))


def test_imagefolder_grayscale_is_one_channel(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _png(tmp_path / split / cls / "x.png", (4, 4), 128, mode="L")
    ds = load_dataset("imagefolder", root=tmp_path)
    assert ds.in_channels == 1 and ds.x_train[0, 0, 0, 0] == pytest.approx(128 / 255)


def test_imagefolder_sizes_must_agree(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png", (4, 4), (1, 2, 3))
    _png(tmp_path / "train" / "a" / "1.png", (5, 4), (1, 2, 3))
    _png(tmp_path / "test" / "a" / "0.png", (4, 4), (1, 2, 3))
    with pytest.raises(UserError, match="one size"):
        load_dataset("imagefolder", root=tmp_path)


def test_imagefolder_missing(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path) in err.value.render()


# ---------------------------------------------------------------------------------------------
# hostile files: refused with one line naming the file and the field, never coerced


def _folder_state(root):
    """{path: bytes} of everything under ``root``: a refusal must leave it exactly as it was."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(root, name="cifar10"):
    """The UserError loading ``name`` from ``root`` raises; checks that nothing was written."""
    before = _folder_state(root)
    with pytest.raises(UserError) as err:
        load_dataset(name, root=root)
    assert _folder_state(root) == before
    return err.value


def edit_pickle(path, **fields):
    """Rewrite one CIFAR pickle with some fields replaced (the keys stay bytes, protocol 2)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in fields.items()})
    _dump(path, batch)


def cifar10_with(tmp_path, fname="data_batch_1", **fields):
    """A tiny CIFAR-10 archive (3 images per batch) with fields of one file replaced."""
    written = write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / fname
    edit_pickle(path, **fields)
    return path, written


CIFAR_PIXELS = "(N, 3072) uint8 array"


@pytest.mark.parametrize("value", [np.nan, 300.0, -1.0])
def test_float_pixels_are_refused_not_wrapped_to_bytes(tmp_path, value):
    data = np.random.default_rng(0).integers(0, 256, size=(3, 3072)).astype(np.float64)
    data[1, 5] = value
    path, _ = cifar10_with(tmp_path, data=data)
    err = refused(tmp_path)
    assert err.message == (
        "cifar10 file data_batch_1: field 'data' holds a (3, 3072) float64 array, "
        f"expected a {CIFAR_PIXELS}"
    )
    assert err.where == str(path)
    assert err.hint == (
        "CIFAR pixels are stored as uint8 (0..255) and advc does not convert them; "
        "download the archive again"
    )


def test_integer_pixels_of_another_dtype_are_refused_even_in_range(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=(3, 3072), dtype=np.int64)
    cifar10_with(tmp_path, fname="test_batch", data=data)
    assert refused(tmp_path).message == (
        f"cifar10 file test_batch: field 'data' holds a (3, 3072) int64 array, expected a {CIFAR_PIXELS}"
    )


@pytest.mark.parametrize(
    ("data", "held"),
    [
        ("not pixels", "a string ('not pixels')"),
        (None, "None"),
        (np.zeros((3, 1024), dtype=np.uint8), "a (3, 1024) uint8 array"),
        (np.zeros(3072, dtype=np.uint8), "a (3072,) uint8 array"),
    ],
    ids=["string", "None", "wrong row length", "one dimension"],
)
def test_data_that_is_not_uint8_rows_of_3072_is_refused(tmp_path, data, held):
    cifar10_with(tmp_path, fname="data_batch_4", data=data)
    assert refused(tmp_path).message == (
        f"cifar10 file data_batch_4: field 'data' holds {held}, expected a {CIFAR_PIXELS}"
    )


@pytest.mark.parametrize(
    ("bad", "held"),
    [
        (2.5, "floats (2.5)"),
        (3.0, "floats (3.0)"),  # a whole float is still not a label: never truncated or cast
        ("cat", "strings ('cat')"),
        (b"cat", "strings (b'cat')"),
        (None, "None"),
        (True, "booleans (True)"),
        ([1], "list objects"),
    ],
    ids=["float", "whole float", "str", "bytes", "None", "bool", "list"],
)
def test_labels_that_are_not_integers_are_refused_not_truncated(tmp_path, bad, held):
    labels = [1, bad, 2]
    path, _ = cifar10_with(tmp_path, fname="data_batch_2", labels=labels)
    err = refused(tmp_path)
    assert err.message == (
        f"cifar10 file data_batch_2: field 'labels' holds {held}, expected integer class labels"
    )
    assert err.where == str(path)
    assert err.hint == "the file is damaged or forged; download the archive again"


@pytest.mark.parametrize(
    ("labels", "held"),
    [
        (None, "None"),
        ("0 1 2", "a string ('0 1 2')"),
        (7, "an int (7)"),
        (np.array([0.5, 1.0, 2.0]), "floats (0.5)"),
        (np.array([True, False, True]), "booleans (True)"),
    ],
    ids=["None", "str", "int", "float array", "bool array"],
)
def test_a_labels_field_that_is_no_list_of_integers_is_refused(tmp_path, labels, held):
    cifar10_with(tmp_path, fname="data_batch_3", labels=labels)
    expected = "a list of integer class labels" if not isinstance(labels, np.ndarray) else "integer class labels"  # fmt: skip
    assert refused(tmp_path).message == (
        f"cifar10 file data_batch_3: field 'labels' holds {held}, expected {expected}"
    )


def test_integer_label_arrays_and_numpy_integers_still_load(tmp_path):
    written = write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    labels_1 = written["data_batch_1"][1]
    edit_pickle(folder / "data_batch_1", labels=np.array(labels_1, dtype=np.uint8))
    edit_pickle(folder / "data_batch_2", labels=[np.int64(v) for v in written["data_batch_2"][1]])
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.y_train[:6].tolist() == labels_1 + written["data_batch_2"][1]


def test_label_out_of_range_names_the_file_and_the_value(tmp_path):
    path, _ = cifar10_with(tmp_path, fname="data_batch_5", labels=[0, 1, 10**30])
    err = refused(tmp_path)
    assert err.message == (
        "cifar10 file data_batch_5: field 'labels' holds "
        "1000000000000000000000000000000, but labels must lie in [0, 10)"
    )
    assert err.where == str(path)


def test_label_count_must_match_image_count(tmp_path):
    cifar10_with(tmp_path, fname="data_batch_1", labels=[0, 1])
    assert refused(tmp_path).message == (
        "cifar10 file data_batch_1: field 'labels' holds 2 labels but field 'data' holds 3 images"
    )


def test_an_empty_split_is_refused(tmp_path):
    cifar10_with(tmp_path, fname="test_batch", data=np.zeros((0, 3072), np.uint8), labels=[])
    assert refused(tmp_path).message == "cifar10 file test_batch: field 'data' holds no images"


def test_a_missing_field_or_a_batch_that_is_no_dict_is_named(tmp_path):
    path, _ = cifar10_with(tmp_path)
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    del batch[b"labels"]
    _dump(path, batch)
    assert refused(tmp_path).message == "cifar10 file data_batch_1: field 'labels' is missing"
    _dump(path, [1, 2])
    assert refused(tmp_path).message == (
        "cifar10 file data_batch_1: holds a list of 2 items, expected a dict of fields"
    )


@pytest.mark.parametrize(
    ("names", "held"),
    [
        (5, "an int (5)"),
        ("airplane", "a string ('airplane')"),
        ([b"airplane", b"automobile"], "2 names"),
        ([b"a"] * 9 + [9], "ints (9)"),
        ([b"a"] * 9 + [None], "None"),
    ],
    ids=["int", "str", "too few", "an int name", "a None name"],
)
def test_label_names_must_be_one_string_per_class(tmp_path, names, held):
    path, _ = cifar10_with(tmp_path, fname="batches.meta", label_names=names)
    err = refused(tmp_path)
    assert err.message == (
        f"cifar10 file batches.meta: field 'label_names' holds {held}, "
        "expected a list of 10 class names"
    )
    assert err.where == str(path)


def test_one_class_training_data_is_refused(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        edit_pickle(folder / f"data_batch_{i}", labels=[3, 3, 3])
    err = refused(tmp_path)
    assert err.message == "cifar10 training split holds only class 3 ('cat'), expected at least 2 classes"  # fmt: skip
    assert err.where == str(folder)
    assert err.hint == (
        "a classifier trained on one class scores 100 % without learning anything; "
        "check that every training file is there and complete"
    )


def test_memo_reference_bomb_is_refused_quickly_with_small_memory(tmp_path):
    """86 KB on disk: one row pickled once, then 20 000 memo references to it.

    ``np.asarray`` would expand it to 20 000 x 3072 int64 (469 MiB, 1.5 GB peak RSS through
    the float conversion); the reader refuses the list before numpy sees it.
    """
    import torchvision.datasets  # noqa: F401  (imported outside the measurement)

    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    row = [i % 256 for i in range(3072)]
    _dump(path, {b"labels": [i % 10 for i in range(20000)], b"data": [row] * 20000})
    assert path.stat().st_size < 90_000
    tracemalloc.start()
    try:
        err = refused(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.message == (
        f"cifar10 file data_batch_1: field 'data' holds a list of 20000 items, expected a {CIFAR_PIXELS}"
    )
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


class _SharedRawArray:
    """Pickles as a numpy array whose raw bytes are one object shared by every such array."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        state = (1, (len(self.raw),), np.dtype(np.uint8), False, self.raw)
        return _reconstruct, (np.ndarray, (0,), b"b"), state


class _RepeatedEncode:
    """Pickles as ``_codecs.encode(text, 'latin1')``, the text memoised and reused."""

    def __init__(self, text: str):
        self.text = text

    def __reduce__(self):
        import codecs

        return codecs.encode, (self.text, "latin1")


@pytest.mark.parametrize(
    "make", [_SharedRawArray, _RepeatedEncode], ids=["arrays sharing one buffer", "repeated decoding"]
)
def test_a_pickle_decoding_to_more_than_its_file_holds_is_refused_while_loading(tmp_path, make):
    # 2000 distinct objects, one 3072-byte buffer or string pickled once and referenced by all
    shared = bytes(3072) if make is _SharedRawArray else "x" * 3072
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _dump(path, {b"labels": [0] * 2000, b"data": [make(shared) for _ in range(2000)]})
    assert path.stat().st_size * 50 < 2000 * 3072  # it decodes to 50x its size and more
    err = refused(tmp_path)
    assert err.message == (
        f"cifar10 file data_batch_2: would decode to more data than its "
        f"{path.stat().st_size} bytes can hold"
    )
    assert err.hint == (
        "the file is forged or damaged (a real CIFAR pickle stores every pixel it decodes); "
        "download the archive again"
    )


def test_data_max_bytes_caps_the_decoded_images(tmp_path, monkeypatch):
    write_cifar10(tmp_path)  # 3 x 3072 image bytes per file, each file about 9.7 KB
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", "20000")
    err = refused(tmp_path)
    assert err.message == (
        "cifar10 file data_batch_3: its images bring the data set to 27648 bytes, "
        "over the ADVC_DATA_MAX_BYTES limit of 20000 bytes"
    )
    assert err.where == str(folder / "data_batch_3")
    assert err.hint == "set ADVC_DATA_MAX_BYTES higher if the data set really is this large"
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", "5000")  # smaller than one file: never opened
    size = (folder / "data_batch_1").stat().st_size
    assert refused(tmp_path).message == (
        f"cifar10 file data_batch_1: the file is {size} bytes, "
        "over the ADVC_DATA_MAX_BYTES limit of 5000 bytes"
    )
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", "lots")
    assert refused(tmp_path).message == "ADVC_DATA_MAX_BYTES must be a positive number of bytes, got 'lots'"  # fmt: skip
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", str(6 * 3 * 3072))  # exactly the data set: loads
    assert load_dataset("cifar10", root=tmp_path).x_train.shape == (15, 3, 32, 32)


# SVHN


def write_svhn(root, *, x_train=None, y_train=None, compress=False):
    """train_32x32.mat / test_32x32.mat as shipped: X is H x W x C x N uint8, y is N x 1."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    y = np.array([[10], [1], [5], [9]])
    savemat(
        root / "train_32x32.mat",
        {"X": x if x_train is None else x_train, "y": y if y_train is None else y_train},
        do_compression=compress,
    )
    savemat(root / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[3], [10]])})
    return x


def test_svhn_official_double_labels_load_like_integers(tmp_path):
    write_svhn(tmp_path, y_train=np.array([[10.0], [1.0], [5.0], [9.0]]))  # as MATLAB stores them
    assert load_dataset("svhn", root=tmp_path).y_train.tolist() == [0, 1, 5, 9]


@pytest.mark.parametrize(
    ("x", "held"),
    [
        (np.full((32, 32, 3, 4), 0.5), "a (32, 32, 3, 4) double array"),
        (np.zeros((32, 32, 3, 4), dtype=np.int16), "a (32, 32, 3, 4) int16 array"),
        (np.zeros((3, 32, 32, 4), dtype=np.uint8), "a (3, 32, 32, 4) uint8 array"),
    ],
    ids=["double", "int16", "channels first"],
)
def test_svhn_images_must_be_uint8_hwcn(tmp_path, x, held):
    write_svhn(tmp_path, x_train=x)
    err = refused(tmp_path, "svhn")
    assert err.message == (
        f"svhn file train_32x32.mat: field 'X' holds {held}, expected a (32, 32, 3, N) uint8 array"
    )
    assert err.where == str(tmp_path / "train_32x32.mat")


@pytest.mark.parametrize(
    ("y", "problem"),
    [
        ([[10], [0], [5], [9]], "holds 0, but labels must lie in [1, 11)"),
        ([[10], [11], [5], [9]], "holds 11, but labels must lie in [1, 11)"),
        ([[10.0], [2.5], [5.0], [9.0]], "holds 2.5, expected whole-number class labels"),
        ([[10.0], [np.nan], [5.0], [9.0]], "holds nan, expected whole-number class labels"),
        ([[10], [1], [5]], "holds 3 labels but field 'X' holds 4 images"),
    ],
    ids=["0", "11", "2.5", "nan", "count"],
)
def test_svhn_labels_must_be_whole_numbers_1_to_10(tmp_path, y, problem):
    write_svhn(tmp_path, y_train=np.array(y))
    err = refused(tmp_path, "svhn")
    assert err.message == f"svhn file train_32x32.mat: field 'y' {problem}"


def test_svhn_compressed_file_is_checked_against_the_cap_from_its_header(tmp_path, monkeypatch):
    # 6 MB of zeros compress to a few KB: the file size says nothing, the header does
    write_svhn(tmp_path, x_train=np.zeros((32, 32, 3, 2000), np.uint8), y_train=np.ones((2000, 1)), compress=True)  # fmt: skip
    assert (tmp_path / "train_32x32.mat").stat().st_size < 100_000
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", "1000000")
    assert refused(tmp_path, "svhn").message == (
        "svhn file train_32x32.mat: its images bring the data set to 6144000 bytes, "
        "over the ADVC_DATA_MAX_BYTES limit of 1000000 bytes"
    )


# MNIST (what torchvision returns is checked)


def write_mnist(root, train_labels=(0, 1, 2, 3, 9)):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", np.array(train_labels))
    write_idx(raw / "t10k-images-idx3-ubyte", images[:2])
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([7, 8]))
    return raw


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ((0, 1, 11, 3, 9), "holds 11, but labels must lie in [0, 10)"),
        ((0, 1, 2, 3), "holds 4 labels but train-images-idx3-ubyte holds 5 images"),
        ((4, 4, 4, 4, 4), None),
    ],
    ids=["out of range", "count", "one class"],
)
def test_mnist_labels_from_torchvision_are_checked(tmp_path, labels, problem):
    raw = write_mnist(tmp_path, labels)
    err = refused(tmp_path, "mnist")
    if problem is None:
        assert err.message == "mnist training split holds only class 4 ('4'), expected at least 2 classes"  # fmt: skip
        assert err.where == str(raw)
    else:
        assert err.message == f"mnist file train-labels-idx1-ubyte: {problem}"
        assert err.where == str(raw / "train-labels-idx1-ubyte")


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (torch.rand(5, 28, 28), "holds a (5, 28, 28) float32 array, expected a (N, 28, 28) uint8 array"),
        (torch.zeros(784, dtype=torch.uint8).view(1, 28, 28).expand(100_000, 28, 28),
         "holds 78400000 pixels backed by only 784 bytes"),
    ],
    ids=["float pixels", "a view repeating 784 bytes"],
)  # fmt: skip
def test_mnist_legacy_processed_files_are_checked_too(tmp_path, images, problem):
    # torchvision prefers MNIST/processed/{training,test}.pt (torch.load) over the idx files
    write_mnist(tmp_path)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    labels = torch.arange(len(images)) % 10
    torch.save((images, labels), processed / "training.pt")
    torch.save((images[:2], labels[:2]), processed / "test.pt")
    err = refused(tmp_path, "mnist")
    assert err.message == f"mnist file training.pt: {problem}"
    assert err.where == str(processed / "training.pt")


# image folder


def test_imagefolder_with_one_class_is_refused(tmp_path):
    for split in ("train", "test"):
        for i in range(2):
            _png(tmp_path / split / "cat" / f"{i}.png", (4, 4), (9, 9, 9))
    err = refused(tmp_path, "imagefolder")
    assert err.message == "imagefolder training split holds only class 0 ('cat'), expected at least 2 classes"  # fmt: skip
    assert err.where == str(tmp_path / "train")


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_imagefolder_pixels_wider_than_8_bits_are_refused_not_rescaled(tmp_path, mode):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            _png(tmp_path / split / cls / "0.png", (4, 4), 7, mode="L")
    wide = tmp_path / "train" / "b" / "1.tif"
    Image.new(mode, (4, 4), 300).save(wide)
    err = refused(tmp_path, "imagefolder")
    assert err.message == (
        f"imagefolder file train/b/1.tif: holds mode {mode!r} pixels, expected 8 bits per "
        "channel (modes L, RGB, RGBA, P, ...)"
    )
    assert err.where == str(wide)


def test_imagefolder_sizes_count_against_the_cap_before_decoding(tmp_path, monkeypatch):
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _png(tmp_path / split / cls / "0.png", (6, 5), (1, 2, 3))
    monkeypatch.setenv("ADVC_DATA_MAX_BYTES", "100")  # one 6x5 RGB image is 90 bytes
    err = refused(tmp_path, "imagefolder")
    assert err.message == (
        "imagefolder file train/dog/0.png: its images bring the data set to 180 bytes, "
        "over the ADVC_DATA_MAX_BYTES limit of 100 bytes"
    )


# ---------------------------------------------------------------------------------------------
# validation split


def test_split_validation_deterministic_and_disjoint():
    x = torch.arange(50, dtype=torch.float32).view(50, 1, 1, 1)
    y = torch.arange(50)
    _, ytr, xval, yval = split_validation(x, y, 10, seed=3)
    assert len(ytr) == 40 and len(yval) == 10
    assert sorted(torch.cat([ytr, yval]).tolist()) == list(range(50))
    assert torch.equal(xval.view(-1).long(), yval)  # x and y stay paired
    again = split_validation(x, y, 10, seed=3)
    assert torch.equal(again[3], yval)
    assert not torch.equal(split_validation(x, y, 10, seed=4)[3], yval)
    with pytest.raises(UserError):
        split_validation(x, y, 50, seed=0)


# ---------------------------------------------------------------------------------------------
# augmentation


def naive_crop_flip(img, pad, oy, ox, flip):
    """The per-image reference: pad, crop at (oy, ox), maybe flip left-right."""
    h, w = img.shape[-2:]
    crop = F.pad(img, (pad, pad, pad, pad))[:, oy : oy + h, ox : ox + w]
    return crop.flip(-1) if flip else crop


def test_augment_matches_naive_reference():
    x = torch.rand(16, 3, 10, 12)
    aug = RandomCropFlip(pad=3)
    params = aug.sample(16, torch.Generator().manual_seed(5))
    out = aug.apply(x, params)
    assert out.shape == x.shape
    for i in range(16):
        ref = naive_crop_flip(x[i], 3, int(params[0][i]), int(params[1][i]), bool(params[2][i]))
        assert torch.equal(out[i], ref)
    assert torch.equal(augment_batch(x, pad=3, generator=torch.Generator().manual_seed(5)), out)


def test_augment_each_output_is_a_crop_of_its_own_input():
    x = torch.rand(8, 1, 8, 8)
    out = augment_batch(x, pad=1, generator=torch.Generator().manual_seed(0))
    candidates = [(oy, ox, f) for oy in range(3) for ox in range(3) for f in (False, True)]
    for i in range(8):
        assert any(torch.equal(out[i], naive_crop_flip(x[i], 1, *c)) for c in candidates)


def test_augment_deterministic_and_degenerate_cases():
    x = torch.rand(32, 3, 16, 16)
    a = augment_batch(x, generator=torch.Generator().manual_seed(1))
    b = augment_batch(x, generator=torch.Generator().manual_seed(1))
    c = augment_batch(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, pad=0, flip=False), x)
    flipped = augment_batch(x, pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))


# ---------------------------------------------------------------------------------------------
# device loader


def _indexed(n):
    """x[i] is filled with i so a batch tells which samples it holds."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return x, torch.arange(n)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("batch", [6, 5, 1])
@pytest.mark.parametrize(
    "augment", [None, RandomCropFlip(pad=1), functools.partial(augment_batch, pad=1)]
)
def test_two_ranks_see_exactly_the_single_process_batches(batch, augment):
    x, y = _indexed(23)
    x = x + torch.rand_like(x) * 0.1  # so crops differ visibly
    one = _epoch(DeviceLoader(x, y, batch, seed=7, augment=augment), 2)
    ranks = [
        _epoch(DeviceLoader(x, y, batch, seed=7, rank=r, world_size=2, augment=augment), 2)
        for r in range(2)
    ]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == -(-23 // batch)
    for b, (xb, yb) in enumerate(one):
        (x0, y0), (x1, y1) = ranks[0][b], ranks[1][b]
        assert abs(len(y0) - len(y1)) <= 1
        assert torch.equal(torch.cat([y0, y1]), yb)
        assert torch.equal(torch.cat([x0, x1]), xb)


def test_permutation_per_epoch():
    x, y = _indexed(20)
    loader = DeviceLoader(x, y, 4, seed=1)
    e0 = torch.cat([yb for _, yb in _epoch(loader, 0)])
    e0_again = torch.cat([yb for _, yb in _epoch(DeviceLoader(x, y, 4, seed=1), 0)])
    e1 = torch.cat([yb for _, yb in _epoch(loader, 1)])
    assert sorted(e0.tolist()) == list(range(20)) and torch.equal(e0, e0_again)
    assert not torch.equal(e0, e1)
    other_seed = torch.cat([yb for _, yb in _epoch(DeviceLoader(x, y, 4, seed=2), 0)])
    assert not torch.equal(e0, other_seed)
    for xb, yb in _epoch(loader, 3):
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # samples and labels stay paired


def test_loader_lengths_and_order():
    x, y = _indexed(10)
    assert len(DeviceLoader(x, y, 4)) == 3
    assert len(DeviceLoader(x, y, 4, drop_last=True)) == 2
    ordered = torch.cat([yb for _, yb in DeviceLoader(x, y, 3, shuffle=False)])
    assert ordered.tolist() == list(range(10))
    with pytest.raises(UserError):
        DeviceLoader(x, y, 0)


def test_augmented_loader_reproducible():
    x, y = _indexed(12)
    x = x + torch.rand_like(x)
    loader = DeviceLoader(x, y, 6, seed=0, augment=RandomCropFlip(pad=1))
    a, b = _epoch(loader, 0), _epoch(loader, 0)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    c = _epoch(loader, 1)
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(a, c))
