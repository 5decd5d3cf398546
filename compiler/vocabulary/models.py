"""The models a train block can name, and the builder in ``advc.runtime.models`` for each.

A builder is called as ``builder(in_channels=..., num_classes=..., **params)``. A model can also
be any ``"package.module:callable"`` a user names; that imports and runs the user's code, so it
runs only when the user allows it (``--trust-code`` / ``trust_code=True``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import Param, fixed


@dataclass(frozen=True)
class Model:
    name: str
    builder: str  # function in advc.runtime.models
    params: dict[str, Param] = field(default_factory=dict)
    doc: str = ""


_WIDTH = fixed("int", lo=1, hi=4096, doc="channels of the first stage")
_DROPOUT = fixed("num", lo=0, hi=1, hi_strict=True)

MODELS: dict[str, Model] = {m.name: m for m in (
    Model("small_cnn", "small_cnn", {"width": _WIDTH, "hidden": fixed("int", lo=1, hi=65536)},
          "two conv blocks and two linear layers: trains in seconds on a CPU"),
    Model("preact_resnet18", "preact_resnet18", {"width": _WIDTH},
          "PreAct ResNet-18 of the FAT/GAIRAT code (11.17M parameters)"),
    Model("wrn34_10", "wrn34_10", {"dropout": _DROPOUT}, "WRN-34-10 (TRADES/MART/GAIRAT)"),
    Model("wrn32_10", "wrn32_10", {"dropout": _DROPOUT}, "WRN-32-10 in Madry's naming (= WRN-34-10)"),
    Model("wrn28_10", "wrn28_10", {"dropout": _DROPOUT}, "WRN-28-10"),
    Model("wrn", "wrn", {"depth": fixed("int", lo=10, hi=1000), "widen": fixed("int", lo=1, hi=64),
                         "dropout": _DROPOUT}, "WRN-depth-widen (depth = 6n + 4)"),
)}  # fmt: skip

USER_MODEL_HINT = "a built-in model name, or \"package.module:callable\" (runs only with --trust-code)"
