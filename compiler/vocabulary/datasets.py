"""The data sets a train block can name, and the reader in ``advc.runtime.data`` that loads each.

Each entry's ``reader`` is a function of ``advc.runtime.data`` called as
``reader(root, download=..., **params)``; the generated training program calls it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import Param, fixed


@dataclass(frozen=True)
class DataSet:
    name: str
    reader: str  # function in advc.runtime.data
    classes: int | None  # None: known only once loaded (an image folder)
    channels: int | None
    size: int | None  # image height = width, in pixels
    params: dict[str, Param] = field(default_factory=dict)
    doc: str = ""


_FILES = {"root": fixed("str", doc="folder holding the files (default: --data-root or $ADVC_DATA)"),
          "download": fixed("bool", default=False, doc="let torchvision download missing files")}  # fmt: skip

DATASETS: dict[str, DataSet] = {d.name: d for d in (
    DataSet("digits", "read_digits", 10, 1, 8, {
        "test": fixed("num", default=0.2, lo=0, lo_strict=True, hi=1, hi_strict=True,
                      doc="fraction of the 1797 images held out as the test split"),
    }, "scikit-learn's bundled 8x8 digits: needs no files and no network"),
    DataSet("cifar10", "read_cifar10", 10, 3, 32, _FILES, "CIFAR-10, the python pickle archives"),
    DataSet("cifar100", "read_cifar100", 100, 3, 32, _FILES, "CIFAR-100, the python pickle archives"),
    DataSet("svhn", "read_svhn", 10, 3, 32, _FILES, "SVHN, train_32x32.mat and test_32x32.mat"),
    DataSet("mnist", "read_mnist", 10, 1, 28, _FILES, "MNIST, the idx files"),
    DataSet("imagefolder", "read_imagefolder", None, None, None, {"root": fixed("str")},
            "root/train/<class>/* and root/test/<class>/*, all one size"),
)}  # fmt: skip
