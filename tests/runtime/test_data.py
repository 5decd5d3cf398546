"""Data sets from tiny files in the real on-disk formats, augmentation and device batching."""

from __future__ import annotations

import functools
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advc.errors import UserError
from advc.runtime.data import (
    DATASETS,
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
    assert {"digits", "cifar10", "cifar100", "svhn", "mnist", "imagefolder"} <= set(DATASETS)
    loader, classes, channels, size = DATASETS["cifar100"]
    assert (classes, channels, size) == (100, 3, 32) and callable(loader)
    assert DATASETS["digits"].image_size == 8


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
