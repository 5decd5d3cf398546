"""Model registry, reduced-size forwards, full-size parameter counts, user callables."""

from __future__ import annotations

import uuid

import pytest
import torch
from torch import nn

from advc.compiler.vocabulary.models import MODELS
from advc.errors import UserError
from advc.runtime.models import (
    Normalize,
    NormalizedModel,
    build_model,
    check_model_fits,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_user_module(tmp_path, monkeypatch, body: str) -> str:
    """A fresh, uniquely named module in tmp_path on sys.path; returns its name."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


USER_MODULE = """
from torch import nn

def make(in_channels, num_classes, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 8 * 8, hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))

class Factory:
    @staticmethod
    def build(in_channels, num_classes):
        return make(in_channels, num_classes)

NOT_CALLABLE = 3

def not_a_module(in_channels, num_classes):
    return "hello"
"""


@pytest.mark.parametrize(
    ("name", "kwargs", "channels", "size", "classes"),
    [
        ("preact_resnet18", {"width": 8}, 3, 32, 10),
        ("wrn", {"depth": 10, "widen": 1}, 3, 32, 100),
        ("wrn", {"depth": 10, "widen": 2, "dropout": 0.3}, 1, 28, 10),
        ("small_cnn", {}, 1, 8, 10),
        ("small_cnn", {}, 1, 28, 10),
        ("small_cnn", {"width": 8}, 3, 32, 100),
    ],
)
def test_reduced_models_forward(name, kwargs, channels, size, classes):
    torch.manual_seed(0)
    model = build_model(name, trust_code=True, in_channels=channels, num_classes=classes, **kwargs)
    out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, classes)
    out.sum().backward()  # trainable end to end
    check_model_fits(model, channels, size, classes)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("preact_resnet18", 11_171_146),
        ("wrn34_10", 46_160_474),
        ("wrn32_10", 46_160_474),
        ("wrn28_10", 36_479_194),
    ],
)
def test_full_size_parameter_counts(name, expected):
    with torch.device("meta"):  # no memory, no forward
        model = build_model(name, trust_code=True, in_channels=3, num_classes=10)
    assert n_params(model) == expected


def test_every_registry_model_builds_small():
    small = {"preact_resnet18": {"width": 4}, "wrn": {"depth": 10, "widen": 1}}
    for name in MODELS:
        with torch.device("meta"):
            model = build_model(name, trust_code=True, in_channels=3, num_classes=7, **small.get(name, {}))
        assert isinstance(model, nn.Module)


def test_normalize_is_first_layer_and_equivalent():
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    plain = build_model("small_cnn", in_channels=3, num_classes=10).eval()
    normed = build_model("small_cnn", in_channels=3, num_classes=10, mean=mean, std=std).eval()
    assert isinstance(next(iter(normed.children())), Normalize)
    normed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(4, 3, 8, 8)
    expected = plain((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(normed(x), expected)
    assert "normalize.mean" in normed.state_dict()  # saved with the model
    assert "normalize.mean" not in plain.state_dict()


def test_normalize_rejects_wrong_channel_count():
    with pytest.raises(UserError, match="3 channels"):
        build_model("small_cnn", in_channels=3, num_classes=10, mean=[0.5, 0.5])


def test_wrn_depth_must_be_6n_plus_4():
    with pytest.raises(UserError, match="depth 12") as err:
        build_model("wrn", in_channels=3, num_classes=10, depth=12, widen=1)
    assert "6n+4" in err.value.hint


def test_unknown_model_did_you_mean():
    with pytest.raises(UserError) as err:
        build_model("wrn34-10", in_channels=3, num_classes=10)
    assert "did you mean" in err.value.message and "wrn34_10" in err.value.message
    with pytest.raises(UserError, match="preact_resnet18"):
        build_model("preact_resnet", in_channels=3, num_classes=10)


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError) as err:
        build_model("small_cnn", in_channels=1, num_classes=10, widht=3)
    assert "widht" in err.value.message and "width" in (err.value.hint or "")


def test_user_callable(tmp_path, monkeypatch):
    mod = write_user_module(tmp_path, monkeypatch, USER_MODULE)
    model = build_model(f"{mod}:make", trust_code=True, in_channels=1, num_classes=10, hidden=6)
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert model[1].out_features == 6
    nested = build_model(f"{mod}:Factory.build", trust_code=True, in_channels=2, num_classes=3)
    assert nested(torch.rand(2, 2, 8, 8)).shape == (2, 3)
    normed = build_model(f"{mod}:make", trust_code=True, in_channels=1, num_classes=10, mean=0.5, std=0.5)
    assert isinstance(normed, NormalizedModel) and isinstance(normed.normalize, Normalize)
    check_model_fits(normed, 1, 8, 10)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("no_such_module_advc_test:make", "cannot import module"),
        ("{mod}:missing", "has no attribute"),
        ("{mod}:NOT_CALLABLE", "not callable"),
        ("{mod}:not_a_module", "not a torch.nn.Module"),
        ("{mod}:make", "does not accept"),  # with an option make() lacks
        (":make", "module:callable"),
    ],
)
def test_user_callable_errors(tmp_path, monkeypatch, target, match):
    mod = write_user_module(tmp_path, monkeypatch, USER_MODULE)
    name = target.format(mod=mod)
    extra = {"depth": 3} if match == "does not accept" else {}
    with pytest.raises(UserError, match=match) as err:
        build_model(name, trust_code=True, in_channels=1, num_classes=10, **extra)
    assert name in err.value.render()


def test_user_model_runs_only_with_trust_code(tmp_path, monkeypatch):
    """A spec's package.module:callable is code: without trust_code nothing is imported."""
    mod = write_user_module(tmp_path, monkeypatch, "import pathlib\npathlib.Path('ran').write_text('x')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        build_model(f"{mod}:make", in_channels=1, num_classes=10)
    assert err.value.render() == (
        f"error: the spec names the model '{mod}:make', which imports and runs the module '{mod}' ({mod}:make) "
        "-- hint: advc runs code a spec names only when you trust it: add --trust-code (Python: trust_code=True)")
    assert not (tmp_path / "ran").exists() and mod not in __import__("sys").modules


def test_user_module_failing_at_import(tmp_path, monkeypatch):
    mod = write_user_module(tmp_path, monkeypatch, "raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="boom"):
        build_model(f"{mod}:make", trust_code=True, in_channels=1, num_classes=10)


def test_check_model_fits_reports_mismatch():
    model = build_model("small_cnn", in_channels=1, num_classes=10)
    model.train()
    stats = model.features[1].running_mean.clone()
    with pytest.raises(UserError) as err:
        check_model_fits(model, 1, 8, 100, model_name="small_cnn", dataset_name="cifar100")
    text = err.value.message
    assert "(2, 10)" in text and "100 classes" in text and "1\u00d78\u00d78" in text
    with pytest.raises(UserError, match="cannot run on these images"):
        check_model_fits(model, 3, (32, 32), 10)
    assert model.training  # mode restored
    assert torch.equal(model.features[1].running_mean, stats)  # BN statistics untouched
