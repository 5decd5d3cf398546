"""Evaluation attacks, the driver and the gradient-masking sanity checks.

Everything runs on the CPU on tiny models: fixed linear models whose optimal L-inf attack is
known in closed form, small MLPs trained for a few dozen steps, and a deliberately masked
model (input quantisation with a zero gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advc.errors import UserError
from advc.runtime.evaluate import (
    AttackConfig,
    adversarial_examples,
    evaluate_model,
    fgsm,
    parse_attack_list,
    pgd,
    robust_accuracy,
    robust_flags,
)
from advc.runtime.sanity import Check, sanity_checks

EPS = 0.05

# fast settings of every attack, for the tests that check invariants rather than strength
FAST = {
    "natural": AttackConfig("natural"),
    "fgsm": AttackConfig("fgsm"),
    "pgd": AttackConfig("pgd", steps=10),
    "cw": AttackConfig("cw", steps=10),
    "autoattack": AttackConfig(
        "autoattack", steps=10, params={"square_queries": 50, "n_targets": 2}
    ),
    "apgd-ce": AttackConfig("apgd-ce", steps=10),
    "apgd-t": AttackConfig("apgd-t", steps=10, params={"n_targets": 2}),
    "fab-t": AttackConfig("fab-t", steps=10, params={"n_targets": 2}),
    "square": AttackConfig("square", steps=50),
}
L2_ATTACKS = ["fgsm", "pgd", "cw", "apgd-ce", "apgd-t", "fab-t"]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation, and on a busy 2-core machine
    spinning OpenMP workers slow these tests down twentyfold. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _blobs(n: int, seed: int, classes: int = 3):
    """Image-shaped (1x4x4) data in [0, 1], one Gaussian blob per class, with many pixels
    exactly on the box faces 0 and 1 so that the box constraint is exercised."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (centers[y] + 0.25 * torch.randn(n, 16, generator=g)).clamp(0.0, 1.0)
    return x.view(n, 1, 4, 4), y


def _trained_mlp(x, y, classes: int = 3, seed: int = 0, steps: int = 60) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(x[0].numel(), 32), nn.ReLU(), nn.Linear(32, classes)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def _linear_binary(eps: float, n: int = 300, seed: int = 0):
    """A fixed 2-class linear model z = Wx + b and data whose closed-form robust accuracy
    under L-inf attacks of radius eps is known: sample i is robust iff it is classified
    correctly and its margin exceeds eps * ||w_y - w_other||_1. The data stay in
    [eps, 1 - eps], so the ball lies inside the box and the box never binds; samples whose
    distance to the boundary is within 20 % of eps are dropped (no ties), and 10 % of the
    labels are flipped so that some samples are wrong to begin with."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        w = torch.randn(2, d, generator=g)
        model[1].weight.copy_(w)
        model[1].bias.copy_(-(w @ torch.full((d,), 0.5)))  # boundary through the centre
    x = eps + (1 - 2 * eps) * torch.rand(4 * n, d, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(dim=1)
    flip = torch.rand(4 * n, generator=g) < 0.1
    y = torch.where(flip, 1 - y, y)
    margin = (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1)
    dist = margin / (w[0] - w[1]).abs().sum()
    keep = ((dist - eps).abs() > 0.2 * eps) & ((dist + eps).abs() > 0.2 * eps)
    x, y, dist = x[keep][:n], y[keep][:n], dist[keep][:n]
    robust = dist > eps
    return model.eval(), x.view(-1, 1, 4, 4), y, 100.0 * robust.sum().item() / len(y)


class _Quantise(nn.Module):
    """x -> round(4x) / 4: a staircase whose gradient is zero almost everywhere -- the
    textbook gradient-masking defence (Athalye et al. 2018 call it shattered gradients)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def _masked_model_and_data(n: int = 120, seed: int = 0):
    """Two classes: 1 iff the quantised pixels sum to more than 8. Each pixel sits 0.04
    from the rounding threshold on the adversarial side, and each sample is 2.25-3.5 away
    from the boundary: pushing all 16 pixels by eps = 0.1 together flips it (what the
    black-box Square attack finds), a random start rarely does, and the gradient is zero."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    while sum(len(v) for v in ys) < n:
        y = torch.randint(0, 2, (4 * n,), generator=g)
        high = torch.rand(4 * n, 16, generator=g) < 0.7
        k = torch.where(y[:, None] == 1, torch.where(high, 3, 2), torch.where(high, 1, 2))
        steps = k.sum(dim=1)
        ok = torch.where(y == 1, (steps >= 41) & (steps <= 46), (steps >= 18) & (steps <= 23))
        level = 0.25 * k[ok].float()
        offset = torch.where(y[ok][:, None] == 1, -0.125 + 0.04, 0.125 - 0.04)
        xs.append((level + offset).view(-1, 1, 4, 4))
        ys.append(y[ok])
    model = nn.Sequential(_Quantise(), nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.stack([torch.zeros(16), torch.ones(16)]))
        model[2].bias.copy_(torch.tensor([0.0, -8.0]))
    return model.eval(), torch.cat(xs)[:n], torch.cat(ys)[:n]


class _ModeRecorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


# ----------------------------------------------------------------------------------------
# every attack: ball, box, no parameter gradients, eval mode, dtype
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_and_data():
    x, y = _blobs(96, seed=1)
    return _trained_mlp(x, y), x, y


@pytest.mark.parametrize("name", list(FAST))
def test_linf_attacks_stay_in_ball_and_box(mlp_and_data, name):
    model, x, y = mlp_and_data
    eps = 0.1
    x_adv = adversarial_examples(model, x, y, FAST[name], eps=eps, batch_size=40)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    if name != "natural":
        assert robust_accuracy(model, x, y, FAST[name], eps=eps) <= robust_accuracy(
            model, x, y, "natural", eps=eps
        )


@pytest.mark.parametrize("name", L2_ATTACKS + ["autoattack"])
def test_l2_attacks_stay_in_ball_and_box(mlp_and_data, name):
    model, x, y = mlp_and_data
    eps = 0.5
    cfg = FAST[name]
    if name == "autoattack":  # Square-L2 is not implemented: the other three components
        cfg = AttackConfig(
            "autoattack",
            steps=10,
            params={"attacks": ["apgd-ce", "apgd-t", "fab-t"], "n_targets": 2},
        )
    x_adv = adversarial_examples(model, x, y, cfg, eps=eps, norm="l2")
    assert (x_adv - x).flatten(1).norm(dim=1).max().item() <= eps + 1e-5
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert robust_accuracy(model, x, y, cfg, eps=eps, norm="l2") < robust_accuracy(
        model, x, y, "natural", eps=eps
    )


@pytest.mark.parametrize("name", list(FAST))
def test_attacks_leave_parameter_grads_alone_and_run_in_eval_mode(name):
    x, y = _blobs(32, seed=2)
    recorder = _ModeRecorder()
    model = nn.Sequential(
        recorder,
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 3),
    )
    model.train()
    stats_before = model[3].running_mean.clone()
    adversarial_examples(model, x, y, FAST[name], eps=0.1)
    assert all(p.grad is None for p in model.parameters()), "an attack wrote parameter .grad"
    assert recorder.modes and not any(recorder.modes), "the model must run in eval mode"
    assert model.training, "the caller's train mode is restored"
    assert torch.equal(model[3].running_mean, stats_before), "batch-norm statistics untouched"


@pytest.mark.parametrize("name", ["pgd", "autoattack", "square"])
def test_attacks_run_in_the_models_dtype(name):
    x, y = _blobs(24, seed=3)
    model = _trained_mlp(x, y, steps=10).double()
    x_adv = adversarial_examples(model, x, y, FAST[name], eps=0.1)  # float32 in, float64 model
    assert x_adv.dtype == torch.float64
    assert (x_adv - x.double()).abs().max().item() <= 0.1 + 1e-9


# ----------------------------------------------------------------------------------------
# closed form: a linear binary classifier
# ----------------------------------------------------------------------------------------


def test_linear_model_attacks_hit_the_closed_form_robust_accuracy():
    model, x, y, expected = _linear_binary(EPS)
    assert 20.0 < expected < 80.0, "the data set must mix robust and non-robust samples"
    # the sign of the CE / CW gradient of a linear model is constant: PGD walks to the
    # optimal corner x - eps * sign(w_y - w_other) and stops there
    assert robust_accuracy(model, x, y, AttackConfig("pgd", steps=20), eps=EPS) == pytest.approx(
        expected
    )
    assert robust_accuracy(model, x, y, AttackConfig("cw"), eps=EPS) == pytest.approx(expected)
    assert robust_accuracy(model, x, y, AttackConfig("pgd", steps=100), eps=EPS) == pytest.approx(
        expected
    )
    # FGSM without random start is the exact optimum of a linear model (Goodfellow et al.)
    x_fgsm = fgsm(model, x, y, eps=EPS, init="none")
    assert 100.0 * (model(x_fgsm).argmax(1) == y).float().mean().item() == pytest.approx(expected)
    # ... with the papers' random start it can only be weaker
    assert robust_accuracy(model, x, y, "fgsm", eps=EPS) >= expected
    aa_cfg = AttackConfig("autoattack", params={"square_queries": 200})
    assert robust_accuracy(model, x, y, aa_cfg, eps=EPS) == pytest.approx(expected)


def test_pgd_final_point_is_the_optimal_corner_on_a_linear_model():
    model, x, y, _ = _linear_binary(EPS, n=50)
    x_adv = pgd(model, x, y, eps=EPS, steps=20)
    w = model[1].weight.detach()
    direction = torch.sign(w[1 - y] - w[y]).view_as(x)  # increases z_other - z_y
    assert torch.allclose(x_adv, x + EPS * direction, atol=1e-6)


def test_pgd_restarts_keep_the_worst_case():
    x, y = _blobs(120, seed=4)
    model = _trained_mlp(x, y, steps=40)
    one = robust_accuracy(model, x, y, AttackConfig("pgd", steps=5), eps=0.1)
    three = robust_accuracy(model, x, y, AttackConfig("pgd", steps=5, restarts=3), eps=0.1)
    assert three <= one  # the first restart is the single run (same seed), later ones only add


def test_robust_accuracy_is_reproducible_and_counts_percent():
    model, x, y, _ = _linear_binary(EPS, n=40)
    a = robust_accuracy(model, x, y, "pgd", eps=EPS)
    assert a == robust_accuracy(model, x, y, "pgd", eps=EPS)
    nat = robust_accuracy(model, x, y, "natural", eps=EPS)
    assert nat == 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)
    assert robust_accuracy(model, x[:0], y[:0], "pgd", eps=EPS) == 0.0


def test_robust_flags_agree_with_predictions_on_x_adv(mlp_and_data):
    model, x, y = mlp_and_data
    x_adv, correct = robust_flags(model, x, y, FAST["pgd"], eps=0.1, batch_size=7)
    assert torch.equal(correct, model(x_adv).argmax(1) == y)


# ----------------------------------------------------------------------------------------
# declarative configuration
# ----------------------------------------------------------------------------------------


def test_labels_are_the_papers_columns():
    cfgs = parse_attack_list(
        [
            "natural",
            {"name": "fgsm"},
            {"name": "pgd", "steps": 20},
            {"name": "cw"},
            {"name": "pgd", "steps": 100},
            {"name": "autoattack"},
        ]
    )
    assert [c.label for c in cfgs] == ["Natural", "FGSM", "PGD-20", "CW∞", "PGD-100", "AA"]
    assert AttackConfig("cw", steps=50).label == "CW∞-50"
    assert AttackConfig("pgd", steps=20, eps=16 / 255).label == "PGD-20 (ε=0.06275)"
    assert AttackConfig("pgd", steps=20, restarts=5).label == "PGD-20 (5 restarts)"
    assert AttackConfig("pgd").label == "PGD-20"


def test_parse_attack_list_fields_and_parameters():
    (cw,) = parse_attack_list([{"name": "CW", "steps": 30, "step_size": 0.002, "confidence": 20}])
    assert cw == AttackConfig("cw", steps=30, step_size=0.002, params={"confidence": 20})
    (aa,) = parse_attack_list([{"name": "autoattack", "params": {"square_queries": 100}}])
    assert aa.params == {"square_queries": 100}
    same = AttackConfig("pgd", steps=7)
    assert parse_attack_list([same]) == [same]


@pytest.mark.parametrize(
    "item, fragment, hint",
    [
        ({"name": "pgdd"}, "unknown evaluation attack 'pgdd'", "did you mean 'pgd'?"),
        ("autoatack", "unknown evaluation attack", "did you mean 'autoattack'?"),
        (
            {"name": "cw", "confidance": 50},
            "no parameter 'confidance'",
            "did you mean 'confidence'?",
        ),
        ({"name": "pgd", "steps": 0}, "steps must be a whole number >= 1", None),
        ({"name": "pgd", "steps": 2.5}, "steps must be a whole number", None),
        ({"name": "pgd", "restarts": True}, "restarts", None),
        ({"steps": 20}, "needs a 'name'", None),
        ({"name": "pgd", "init": "gaussian"}, "init must be 'none', 'uniform' or 'normal'", None),
        ({"name": "autoattack", "version": "plus"}, "version must be 'standard'", None),
        ({"name": "autoattack", "attacks": ["apgd-dlr"]}, "attacks must be a list", None),
        ({"name": "autoattack", "square_queries": 0}, "square_queries must be a whole", None),
        (42, "a name or a mapping", None),
    ],
)
def test_parse_attack_list_errors_are_user_errors(item, fragment, hint):
    with pytest.raises(UserError) as info:
        parse_attack_list([item])
    assert fragment in info.value.message
    if hint:
        assert info.value.hint == hint


def test_duplicate_columns_are_refused():
    with pytest.raises(UserError, match="share the column 'PGD-20'"):
        parse_attack_list([{"name": "pgd"}, {"name": "pgd", "steps": 20}])


def test_evaluate_model_returns_columns_in_order_on_the_first_n():
    model, x, y, _ = _linear_binary(EPS, n=100)
    res = evaluate_model(
        model, x, y, ["natural", {"name": "pgd", "steps": 20}, "fgsm"], eps=EPS, n=30
    )
    assert list(res) == ["Natural", "PGD-20", "FGSM"]
    assert res["Natural"] == robust_accuracy(model, x[:30], y[:30], "natural", eps=EPS)
    assert all(0.0 <= v <= 100.0 for v in res.values())
    assert res["PGD-20"] <= res["FGSM"] <= res["Natural"]


# ----------------------------------------------------------------------------------------
# sanity checks against gradient masking
# ----------------------------------------------------------------------------------------


def test_sanity_checks_pass_on_a_normal_model():
    x, y = _blobs(160, seed=5, classes=2)
    model = _trained_mlp(x, y, classes=2, steps=60)
    attacks = [
        "natural",
        "fgsm",
        {"name": "pgd", "steps": 20},
        "cw",
        {"name": "pgd", "steps": 100},
        {"name": "autoattack", "params": {"square_queries": 200}},
    ]
    results = evaluate_model(model, x, y, attacks, eps=0.2)
    assert 20.0 < results["PGD-20"] < results["Natural"] - 10.0, "a model with something to attack"
    checks = sanity_checks(model, x, y, results, eps=0.2, subset=100, square_queries=300)
    assert all(isinstance(c, Check) for c in checks)
    names = [c.name for c in checks]
    assert names == [
        "eps0-equals-natural",
        "monotone-in-eps",
        "more-steps-not-weaker",
        "autoattack-strongest",
        "black-box-not-stronger",
        "unbounded-reaches-chance",
    ]
    assert [c.status for c in checks] == ["pass"] * 6, [
        c.detail for c in checks if c.status != "pass"
    ]


def test_sanity_checks_flag_a_gradient_masking_model():
    model, x, y = _masked_model_and_data()
    assert robust_accuracy(model, x, y, "natural", eps=0.1) == 100.0
    results = evaluate_model(model, x, y, ["natural", {"name": "pgd", "steps": 20}], eps=0.1)
    assert results["PGD-20"] > 85.0, "white-box PGD is fooled by the zero gradient"
    checks = {
        c.name: c
        for c in sanity_checks(model, x, y, results, eps=0.1, subset=120, square_queries=100)
    }
    assert (
        "more-steps-not-weaker" not in checks and "autoattack-strongest" not in checks
    )  # not computed
    assert checks["black-box-not-stronger"].status == "warn"
    assert "masked" in checks["black-box-not-stronger"].detail
    assert checks["eps0-equals-natural"].status == "pass"
    assert any(c.status == "warn" for c in checks.values())


def test_sanity_checks_flag_autoattack_above_another_column_and_weaker_long_pgd():
    model, x, y, _ = _linear_binary(EPS, n=60)
    fake = {"Natural": 90.0, "PGD-20": 40.0, "PGD-100": 45.0, "AA": 42.0}
    checks = {
        c.name: c for c in sanity_checks(model, x, y, fake, eps=EPS, subset=20, square_queries=20)
    }
    assert checks["more-steps-not-weaker"].status == "warn"
    assert checks["autoattack-strongest"].status == "warn"
    assert "PGD-20" in checks["autoattack-strongest"].detail
