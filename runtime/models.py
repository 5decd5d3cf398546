"""The papers' models, a small CNN for laptops, and any ``module:callable`` a user names.

Every model works in [0, 1] pixel space: attacks, ε-balls and clamping are all defined there,
so per-channel normalisation (when a data set wants it) is the model's FIRST layer, a
``Normalize`` module, and never a preprocessing step the attack would have to know about.

The architectures follow the code the FAT and GAIRAT results were produced with:
``preact_resnet18`` is ``models/preact_resnet.py`` of those repositories (no BN-ReLU after the
last block, 11.17M parameters for 10 classes); the wide ResNets are the Madry/TRADES
``WideResNet`` (BN-ReLU-conv basic blocks, 1x1 conv shortcuts, 46.16M parameters for
WRN-34-10). Global average pooling is adaptive, so the same models run on other image sizes.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advc.errors import UserError

__all__ = [
    "Normalize",
    "NormalizedModel",
    "PreActBlock",
    "PreActResNet",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "check_model_fits",
    "preact_resnet18",
    "small_cnn",
    "user_model",
    "wrn",
    "wrn28_10",
    "wrn32_10",
    "wrn34_10",
]

Stats = Sequence[float] | float | None


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a layer, so inputs stay in [0, 1] pixel space.

    mean/std are buffers: they move with the model and are saved in its checkpoint.
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float, channels: int):
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        for what, t in (("mean", m), ("std", s)):
            if t.numel() not in (1, channels):
                raise UserError(
                    f"normalisation {what} has {t.numel()} values but images have "
                    f"{channels} channels",
                    where=what,
                    hint=f"give one value or {channels} values",
                )
        if (s <= 0).any():
            raise UserError("normalisation std must be positive", where="std")
        self.register_buffer("mean", m.expand(channels).clone().view(1, channels, 1, 1))
        self.register_buffer("std", s.expand(channels).clone().view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _first_layer(mean: Stats, std: Stats, channels: int) -> nn.Module:
    if mean is None and std is None:
        return nn.Identity()
    return Normalize(0.0 if mean is None else mean, 1.0 if std is None else std, channels)


class NormalizedModel(nn.Module):
    """A user model with a ``Normalize`` layer in front (user code need not know about it)."""

    def __init__(self, normalize: nn.Module, net: nn.Module):
        super().__init__()
        self.normalize, self.net = normalize, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


# --------------------------------------------------------------------------------------------
# PreAct ResNet-18


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv, BN-ReLU-conv, plus the (projected) input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet (He et al. 2016) with four stages of widths w, 2w, 4w, 8w."""

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 64,
        mean: Stats = None,
        std: Stats = None,
    ):
        super().__init__()
        self.normalize = _first_layer(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages, planes_in = [], width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(PreActBlock(planes_in, planes, s))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(planes_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 4) on 32x32 inputs
        return self.linear(out)


def preact_resnet18(
    *, in_channels: int = 3, num_classes: int = 10, width: int = 64, mean: Stats = None,
    std: Stats = None,
) -> PreActResNet:  # fmt: skip
    """PreAct ResNet-18 ([2, 2, 2, 2] blocks); ``width`` scales all channels (64 = the paper)."""
    return PreActResNet(
        (2, 2, 2, 2), in_channels=in_channels, num_classes=num_classes, width=width,
        mean=mean, std=std,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Wide ResNet


class WideBasicBlock(nn.Module):
    """The Madry/TRADES wide basic block: BN-ReLU-conv-BN-ReLU-(dropout)-conv.

    When the block changes width, the activated input feeds both the residual branch and a
    1x1 conv shortcut (this is what the published code computes).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis 2016): three groups of (d-4)/6 blocks, widths 16k/32k/64k."""

    def __init__(
        self,
        depth: int = 34,
        widen: int = 10,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.0,
        mean: Stats = None,
        std: Stats = None,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or widen < 1:
            raise UserError(
                f"no wide ResNet of depth {depth} and widen factor {widen}",
                where=f"wrn(depth={depth}, widen={widen})",
                hint="depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), widen >= 1",
            )
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.normalize = _first_layer(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._group(n, widths[0], widths[1], 1, dropout)
        self.block2 = self._group(n, widths[1], widths[2], 2, dropout)
        self.block3 = self._group(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    @staticmethod
    def _group(n: int, cin: int, cout: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            *[WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout)
              for i in range(n)]
        )  # fmt: skip

    def _init_weights(self) -> None:
        """The published initialisation: He-normal (fan-out) convs, unit BN, zero linear bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avg_pool2d(out, 8) on 32x32 inputs
        return self.fc(out)


def wrn(
    *, depth: int = 34, widen: int = 10, in_channels: int = 3, num_classes: int = 10,
    dropout: float = 0.0, mean: Stats = None, std: Stats = None,
) -> WideResNet:  # fmt: skip
    """WRN-``depth``-``widen`` (depth = 6n+4)."""
    return WideResNet(
        depth, widen, in_channels=in_channels, num_classes=num_classes, dropout=dropout,
        mean=mean, std=std,
    )  # fmt: skip


def wrn34_10(**kwargs) -> WideResNet:
    """WRN-34-10, the TRADES/MART/GAIRAT model (5 blocks per group, 46.16M parameters)."""
    return wrn(depth=34, widen=10, **kwargs)


def wrn32_10(**kwargs) -> WideResNet:
    """WRN-32-10 in Madry et al.'s naming, which counts depth as 6n+2: the same 5 blocks per
    group as WRN-34-10 (FAT's ``wrn_madry.py``), so the same network."""
    return wrn(depth=34, widen=10, **kwargs)


def wrn28_10(**kwargs) -> WideResNet:
    """WRN-28-10 (4 blocks per group, 36.48M parameters)."""
    return wrn(depth=28, widen=10, **kwargs)


# --------------------------------------------------------------------------------------------
# small CNN


class SmallCNN(nn.Module):
    """Two conv blocks, adaptive pooling and two linear layers: trains in seconds on a CPU.

    Sized for the embedded 8x8 digits, and usable on 28x28 / 32x32 images because the
    pooling before the classifier is adaptive.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        hidden: int = 128,
        mean: Stats = None,
        std: Stats = None,
    ):
        super().__init__()
        self.normalize = _first_layer(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def small_cnn(
    *, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 128,
    mean: Stats = None, std: Stats = None,
) -> SmallCNN:  # fmt: skip
    """The laptop model (default for the embedded digits)."""
    return SmallCNN(
        in_channels=in_channels, num_classes=num_classes, width=width, hidden=hidden,
        mean=mean, std=std,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# registry

def _import_callable(name: str) -> Callable[..., object]:
    """Resolve ``package.module:attr.path``; the only place user code gets imported."""
    module_name, _, attr_path = name.partition(":")
    hint = "name a model as package.module:callable, importable from Python's path (PYTHONPATH)"
    if not module_name or not attr_path:
        raise UserError(f"model {name!r} is not of the form module:callable", where=name, hint=hint)
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"cannot import module {module_name!r}: {exc}", where=name, hint=hint
        ) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise UserError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}",
            where=name,
            hint="fix the error in that module",
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UserError(
                f"module {module_name!r} has no attribute {attr_path!r}", where=name, hint=hint
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{name!r} is not callable", where=name, hint=hint)
    return obj


def _call(ctor: Callable[..., object], name: str, kwargs: dict) -> object:
    """Call a constructor, reporting options it does not take as a user error (not a traceback)."""
    try:
        sig = inspect.signature(ctor)
    except (TypeError, ValueError):  # builtins / C callables: no signature to check
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            raise UserError(
                f"model {name!r} does not accept these options: {exc}",
                where=name,
                hint=f"its options are: {', '.join(params) or '(none)'}",
            ) from None
    try:
        return ctor(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"building model {name!r} failed: {type(exc).__name__}: {exc}",
            where=name,
            hint="check the model's options",
        ) from exc


def user_model(name: str, *, trust_code: bool, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """A user's ``package.module:callable``, called with ``in_channels``, ``num_classes`` and the
    extra options (``mean``/``std`` become a ``Normalize`` layer in front of what it returns).

    Importing a module runs its code: a spec that names one is code, so it runs only when the
    user says so (``--trust-code`` / ``trust_code=True``), as Hugging Face's ``trust_remote_code``.
    """
    if not trust_code:
        raise UserError(
            f"the spec names the model {name!r}, which imports and runs the module "
            f"{name.partition(':')[0]!r}",
            where=name,
            hint="advc runs code a spec names only when you trust it: add --trust-code "
            "(Python: trust_code=True)",
        )
    ctor = _import_callable(name)
    mean, std = kwargs.pop("mean", None), kwargs.pop("std", None)
    model = _call(ctor, name, dict(in_channels=in_channels, num_classes=num_classes, **kwargs))
    if not isinstance(model, nn.Module):
        raise UserError(
            f"{name!r} returned {type(model).__name__}, not a torch.nn.Module",
            where=name,
            hint="make the callable return an nn.Module",
        )
    if mean is not None or std is not None:
        model = NormalizedModel(_first_layer(mean, std, in_channels), model)
    return model


def build_model(name: str, *, in_channels: int, num_classes: int, trust_code: bool = False, **kwargs) -> nn.Module:
    """Build a model of advc's vocabulary by name, or a user's ``package.module:callable``
    (only with ``trust_code``, see :func:`user_model`)."""
    from advc.compiler.vocabulary.models import MODELS

    if ":" in name:
        return user_model(name, trust_code=trust_code, in_channels=in_channels, num_classes=num_classes, **kwargs)
    entry = MODELS.get(name.lower())
    if entry is None:
        close = difflib.get_close_matches(name.lower(), list(MODELS), n=3)
        raise UserError(
            f"unknown model {name!r}" + (f"; did you mean {' or '.join(close)}?" if close else ""),
            where=name,
            hint=f"known models: {', '.join(MODELS)}; or name your own as package.module:callable",
        )
    return _call(globals()[entry.builder], name, dict(in_channels=in_channels, num_classes=num_classes, **kwargs))


def check_model_fits(
    model: nn.Module,
    in_channels: int,
    image_size: int | tuple[int, int],
    num_classes: int,
    *,
    model_name: str | None = None,
    dataset_name: str | None = None,
) -> None:
    """Fail early, with one line, when a model cannot take this data set's images or classes.

    One forward pass of a zero batch of 2, in eval mode and without gradients (BN statistics
    are left untouched); the model's train/eval mode is restored afterwards.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    mname = model_name or type(model).__name__
    data = f"data set {dataset_name}" if dataset_name else "the data set"
    expect = f"{data} has {num_classes} classes / images {in_channels}\u00d7{h}\u00d7{w}"
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, h, w, device=device, dtype=dtype))
    except Exception as exc:
        raise UserError(
            f"model {mname} cannot run on these images ({type(exc).__name__}: {exc}) but {expect}",
            where=mname,
            hint="build the model for this data set's channels and image size",
        ) from exc
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise UserError(
            f"model {mname} outputs shape {shape} but {expect}",
            where=mname,
            hint="the model must return one logit per class, shaped (batch, classes)",
        )
