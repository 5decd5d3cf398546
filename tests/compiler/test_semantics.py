"""The compiled attack, weights and loss against DESIGN §3 and the seed's Algorithm 1.

Each property runs on small random models and inputs drawn by hypothesis. The reference
implementations below are deliberately naive: one sample at a time, float64, Python control
flow that mirrors the pseudocode line by line.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advc.api import CompiledObjective
from advc.compiler.check import check_text
from advc.compiler.codegen import generate
from advc.runtime.attacks import random_start

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRAIN = "train { data digits model small_cnn epochs 1 optim sgd(lr = 0.1) }"


@functools.cache
def objective(form: str = "minmax", K: int = 5, alpha: float = 0.05, eps: float = 0.1, init: str = "none",
              norm: str = "linf", weight: str = "none", noise: float = 0.0, loss: str = "ce(adv)") -> CompiledObjective:
    text = (
        f"objective t {{\n threat {norm}(eps = {eps!r})\n"
        f" attack pgd(steps = {K}, step_size = {alpha!r}, init = {init}, noise = {noise!r})\n"
        f" form {form}\n weight {weight}\n loss {loss}\n}}\n{TRAIN}\n"
    )
    program = check_text(text, "t.adv")
    return CompiledObjective(program, generate(program))


def smooth_model(seed: int, d: int, classes: int = 3, dtype=torch.float64) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5)
    return model.to(dtype)


def batch(seed: int, n: int, shape=(1, 2, 3), classes: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g).to(dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


seeds = st.integers(0, 10_000)
Ks = st.integers(1, 6)
taus = st.integers(0, 7)


# --- 1. tau >= K is exactly PGD-K --------------------------------------------------------


@SETTINGS
@given(seed=seeds, K=Ks, extra=st.integers(0, 3), init=st.sampled_from(["none", "uniform", "normal"]),
       noise=st.sampled_from([0.0, 0.01]))
def test_tau_at_least_K_is_pgd_bit_for_bit(seed, K, extra, init, noise):
    model, (x, y) = smooth_model(seed, 6, dtype=torch.float32), batch(seed, 9, dtype=torch.float32)
    minmax = objective("minmax", K, init=init, noise=noise)
    minmin = objective(f"minmin(tau = {K + extra})", K, init=init, noise=noise)
    torch.manual_seed(seed)
    a = minmax.attack(model, x, y, epoch=0)
    torch.manual_seed(seed)
    b = minmin.attack(model, x, y, epoch=0)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.kappa, b.kappa) and torch.equal(a.steps, b.steps)


# --- 2. the ball and the box ---------------------------------------------------------------


@SETTINGS
@given(seed=seeds, K=Ks, tau=taus, eps=st.floats(0.001, 0.6), alpha=st.floats(0.001, 0.5),
       norm=st.sampled_from(["linf", "l2"]), init=st.sampled_from(["none", "uniform", "normal"]),
       form=st.sampled_from(["minmax", "minmin"]), shape=st.sampled_from([(4,), (1, 3, 3), (2, 2, 2)]))
def test_adversarial_points_stay_in_the_ball_and_the_box(seed, K, tau, eps, alpha, norm, init, form, shape):
    d = math.prod(shape)
    model, (x, y) = smooth_model(seed, d), batch(seed, 7, shape)
    prog = objective(form if form == "minmax" else f"minmin(tau = {tau})", K, alpha, eps, init, norm)
    torch.manual_seed(seed)
    res = prog.attack(model, x, y, epoch=0)
    delta = (res.x_adv - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps * (1 + 1e-6)
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-6)).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


# --- 3. kappa, steps, and the stopping rule ---------------------------------------------------


@SETTINGS
@given(seed=seeds, K=Ks, tau=taus, rho=st.sampled_from([0.0, 0.3, 1.0]))
def test_kappa_steps_bounds_and_the_stop_respects_the_margin(seed, K, tau, rho):
    model, (x, y) = smooth_model(seed, 6), batch(seed, 12)
    prog = objective(f"minmin(tau = {tau}, rho = {rho!r})", K, alpha=0.08, eps=0.3)
    res = prog.attack(model, x, y, epoch=0)
    assert res.kappa.dtype == torch.long and res.steps.dtype == torch.long
    assert ((res.kappa >= 0) & (res.kappa <= K)).all()
    assert ((res.steps >= 0) & (res.steps <= K)).all()
    stopped = res.steps < K
    with torch.no_grad():
        z = model(res.x_adv)
    m = z.scatter(1, y[:, None], -math.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)
    # a sample that stopped early is misclassified at the point it returned, by at least rho
    assert (m[stopped] > 0).all() and (m[stopped] >= rho - 1e-12).all()
    if tau == 0:
        assert (stopped | (res.steps == K)).all()


# --- 4. the GAIRAT weights ----------------------------------------------------------------------


def gair_published(K, kappa, lam, fn):
    """GAIR.py, verbatim arithmetic: int(num_steps/2) is an integer division."""
    half = int(K / 2)
    if fn == "tanh":
        w = ((lam + (half - kappa) * 5 / half).tanh() + 1) / 2
    elif fn == "sigmoid":
        w = (lam + (half - kappa) * 5 / half).sigmoid()
    else:
        w = ((K + 1) - kappa) / (K + 1)
    return w * len(w) / w.sum()


@SETTINGS
@given(K=st.integers(2, 11), fn=st.sampled_from(["tanh", "sigmoid", "discrete"]), lam=st.sampled_from([-1.0, 0.0, 2.0]),
       kappa=st.lists(st.integers(0, 11), min_size=1, max_size=40), from_epoch=st.integers(0, 5))
def test_gair_weights_mean_one_monotone_burn_in_and_published_constants(K, fn, lam, kappa, from_epoch):
    prog = objective("minmax", K, weight=f"gair(fn = {fn}, lambda = {lam!r}, from_epoch = {from_epoch})",
                     loss="ce(adv) * weight")
    kap = torch.tensor([min(k, K) for k in kappa])
    res = prog.AttackResult(torch.zeros(len(kap), 2, dtype=torch.float64), kap, kap.clone(), 0)
    w = prog.weights(res, epoch=from_epoch)
    assert torch.allclose(w.mean(), torch.tensor(1.0, dtype=w.dtype))
    assert torch.allclose(w, gair_published(K, kap.double(), lam, fn))
    order = torch.argsort(kap)
    assert (w[order][1:] <= w[order][:-1] + 1e-12).all()  # non-increasing in kappa
    if from_epoch > 0:
        assert torch.equal(prog.weights(res, epoch=from_epoch - 1), torch.ones_like(w))


def test_weights_normalise_over_the_global_batch():
    prog = objective("minmax", 4, weight="gair(fn = tanh, lambda = 0, from_epoch = 0)", loss="ce(adv) * weight")
    kap = torch.tensor([0, 1, 2, 3, 4, 4])
    make = lambda k: prog.AttackResult(torch.zeros(len(k), 1), k, k, 0)  # noqa: E731
    whole = prog.weights(make(kap), epoch=0)
    # two "processes" each holding half; all_reduce sums their totals
    parts = [kap[:3], kap[3:]]
    raws = [prog.weights(make(p), epoch=0, all_reduce=lambda t: t * 0 + 1) for p in parts]  # smoke the hook
    assert all(r.shape == p.shape for r, p in zip(raws, parts))
    totals = {}

    def fake_all_reduce_for(rank):
        def reduce(t):
            key = "count" if float(t) == len(parts[rank]) else "total"
            totals.setdefault((rank, key), t)
            other = 1 - rank
            mine = t
            theirs_raw = prog.weights(make(parts[other]), epoch=0)  # mean-1 weights of the other shard
            if key == "count":
                return mine + len(parts[other])
            raw_other = (1 + torch.tanh(5 * (2 - parts[other].float()) / 2)) / 2
            del theirs_raw
            return mine + raw_other.sum()
        return reduce

    shards = [prog.weights(make(parts[r]), epoch=0, all_reduce=fake_all_reduce_for(r)) for r in (0, 1)]
    assert torch.allclose(torch.cat(shards), whole)


# --- 5. equivalence with a per-sample reference of Algorithm 1 ------------------------------------


def algorithm1_reference(model, x, y, x0, K, tau, eps, alpha, rho):
    """The seed's Algorithm 1 with GAIRAT's kappa, one sample at a time, float64."""
    out, kappas, steps = [], [], []
    for i in range(len(x)):
        xi, t, kappa, taken = x0[i : i + 1].clone(), tau, 0, 0
        for _ in range(K):
            xi.requires_grad_(True)
            logits = model(xi)
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y[i : i + 1], reduction="sum"), xi)
            z = logits.detach()[0].tolist()
            m = max(v for j, v in enumerate(z) if j != int(y[i])) - z[int(y[i])]
            wrong = m > 0 and m >= rho
            if m <= 0:
                kappa += 1
            if wrong and t == 0:
                break
            if wrong:
                t -= 1
            xi = xi.detach() + alpha * g.sign()
            xi = torch.clamp(torch.min(torch.max(xi, x[i : i + 1] - eps), x[i : i + 1] + eps), 0, 1)
            taken += 1
        out.append(xi.detach())
        kappas.append(kappa)
        steps.append(taken)
    return torch.cat(out), torch.tensor(kappas), torch.tensor(steps)


@SETTINGS
@given(seed=seeds, K=Ks, tau=taus, rho=st.sampled_from([0.0, 0.5]), init=st.sampled_from(["none", "uniform"]))
def test_compiled_attack_equals_per_sample_reference(seed, K, tau, rho, init):
    eps, alpha = 0.25, 0.07
    model, (x, y) = smooth_model(seed, 6), batch(seed, 10)
    prog = objective(f"minmin(tau = {tau}, rho = {rho!r})", K, alpha, eps, init)
    torch.manual_seed(seed)
    res = prog.attack(model, x, y, epoch=0)
    torch.manual_seed(seed)
    x0 = random_start(x, eps, "linf", init)
    ref_x, ref_kappa, ref_steps = algorithm1_reference(model, x, y, x0, K, tau, eps, alpha, rho)
    assert torch.equal(res.kappa, ref_kappa)
    assert torch.equal(res.steps, ref_steps)
    assert torch.allclose(res.x_adv, ref_x, atol=1e-9, rtol=0)


# --- 6. compaction equals masking ------------------------------------------------------------------


def masked_full_batch(model, x, y, x0, K, tau, eps, alpha):
    """Early-stopped PGD on the whole batch every step, with masks instead of an active set."""
    x_adv, budget = x0.clone(), torch.full((len(x),), tau)
    active = torch.ones(len(x), dtype=torch.bool)
    kappa, steps = torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)
    for _ in range(K):
        xa = x_adv.clone().requires_grad_(True)
        logits = model(xa)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        z = logits.detach()
        m = z.scatter(1, y[:, None], -math.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)
        wrong = m > 0
        kappa += (active & (m <= 0)).long()
        stop = active & wrong & (budget == 0)
        budget -= (active & wrong & ~stop).long()
        active = active & ~stop
        new = torch.clamp(torch.min(torch.max(x_adv + alpha * g.sign(), x - eps), x + eps), 0, 1)
        x_adv = torch.where(active.view(-1, *[1] * (x.dim() - 1)), new, x_adv)
        steps += active.long()
    return x_adv, kappa, steps


@SETTINGS
@given(seed=seeds, K=Ks, tau=taus)
def test_active_set_compaction_equals_full_batch_masks(seed, K, tau):
    eps, alpha = 0.3, 0.1
    model, (x, y) = smooth_model(seed, 6), batch(seed, 16)
    prog = objective(f"minmin(tau = {tau})", K, alpha, eps, "none")
    res = prog.attack(model, x, y, epoch=0)
    mx, mk, ms = masked_full_batch(model, x, y, x.clone(), K, tau, eps, alpha)
    assert torch.equal(res.kappa, mk) and torch.equal(res.steps, ms)
    assert torch.allclose(res.x_adv, mx, atol=1e-12, rtol=0)


# --- 7. order and labels ---------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, K=st.integers(2, 6), tau=st.integers(0, 2), perm_seed=seeds)
def test_result_rows_belong_to_their_inputs_and_labels(seed, K, tau, perm_seed):
    model, (x, y) = smooth_model(seed, 6), batch(seed, 12)
    prog = objective(f"minmin(tau = {tau})", K, 0.1, 0.3, "none")
    res = prog.attack(model, x, y, epoch=0)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(perm_seed))
    shuffled = prog.attack(model, x[perm], y[perm], epoch=0)
    assert torch.equal(shuffled.kappa, res.kappa[perm]) and torch.equal(shuffled.steps, res.steps[perm])
    assert torch.allclose(shuffled.x_adv, res.x_adv[perm], atol=1e-12, rtol=0)
    # each row is what attacking that sample alone, against its own label, gives
    for i in (0, len(x) - 1):
        alone = prog.attack(model, x[i : i + 1], y[i : i + 1], epoch=0)
        assert torch.equal(alone.kappa, res.kappa[i : i + 1]) and torch.equal(alone.steps, res.steps[i : i + 1])
        assert torch.allclose(alone.x_adv, res.x_adv[i : i + 1], atol=1e-12, rtol=0)


def test_samples_really_stop_at_different_steps_in_the_order_test():
    # guard: the order property above must exercise mixed stopping times
    model, (x, y) = smooth_model(3, 6), batch(3, 64)
    res = objective("minmin(tau = 1)", 6, 0.1, 0.3, "none").attack(model, x, y, epoch=0)
    assert len(set(res.steps.tolist())) >= 2


# --- training-time details -------------------------------------------------------------------------


class ModeRecorder(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.modes = inner, []

    def forward(self, x):
        self.modes.append(self.training)
        return self.inner(x)


@pytest.mark.parametrize("form", ["minmax", "minmin(tau = 1)"])
def test_attack_runs_in_eval_mode_with_input_only_gradients(form):
    model = ModeRecorder(smooth_model(0, 6, dtype=torch.float32))
    x, y = batch(0, 8, dtype=torch.float32)
    model.train()
    prog = objective(form, 4, init="uniform")
    prog.attack(model, x, y, epoch=0)
    assert model.modes and not any(model.modes)
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_attack_and_loss_follow_the_model_dtype(dtype):
    model = smooth_model(1, 6, dtype=dtype)
    x, y = batch(1, 8, dtype=dtype)
    prog = objective("minmin(tau = 1)", 3, init="uniform", weight="gair(fn = tanh, lambda = 0, from_epoch = 0)",
                     loss="ce(adv) * weight")
    res = prog.attack(model, x, y, epoch=0)
    assert res.x_adv.dtype == dtype
    value = prog.loss(model, x, y, res, epoch=0)
    assert value.dim() == 0 and value.dtype == dtype
    value.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_trades_and_mart_losses_match_the_published_formulas():
    model = smooth_model(2, 6)
    x, y = batch(2, 8)
    trades = objective("minmax", 3, init="normal", loss="ce(nat) + beta * kl(nat, adv) where beta = 6")
    res = trades.attack(model, x, y, epoch=0)
    nat, adv = model(x), model(res.x_adv)
    expected = F.cross_entropy(nat, y) + 6 * (1 / len(x)) * torch.nn.KLDivLoss(reduction="sum")(
        F.log_softmax(adv, dim=1), F.softmax(nat, dim=1))
    assert torch.allclose(trades.loss(model, x, y, res, epoch=0), expected)

    mart = objective("minmax", 3, init="normal",
                     loss="bce(adv) + beta * kl(nat, adv) * (1.0000001 - prob(nat)) where beta = 6")
    adv_probs = F.softmax(adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(nat, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze()
    kl = torch.nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs).sum(1)
    expected = loss_adv + 6 * (1.0 / len(x)) * torch.sum(kl * (1.0000001 - true_probs))
    assert torch.allclose(mart.loss(model, x, y, res, epoch=0), expected, atol=1e-8)


def test_user_weight_expression_of_the_margin_compiles_to_tensor_code():
    prog = objective("minmin(tau = 1)", 4, init="none", weight="exp(-margin / T) where T = 2, from_epoch = 0",
                     loss="ce(adv) * weight")
    model, (x, y) = smooth_model(5, 6), batch(5, 10)
    res = prog.attack(model, x, y, epoch=0)
    raw = torch.exp(-res.margin / 2)
    assert torch.allclose(prog.weights(res, epoch=0), raw * len(raw) / raw.sum())


# --- schedules: every piece is reachable (GAIRAT's piecewise lambda had dead branches) ----------


points = st.lists(st.tuples(st.integers(1, 200), st.floats(-3, 3, allow_nan=False)), min_size=1, max_size=5,
                  unique_by=lambda p: p[0])


@SETTINGS
@given(pts=points, first=st.floats(-3, 3, allow_nan=False), kind=st.sampled_from(["piecewise", "linear", "cosine"]))
def test_generated_schedules_agree_with_the_ir_and_reach_every_piece(pts, first, kind):
    from advc.compiler.ir import sched_at

    pts = sorted(pts)
    body = ", ".join(f"{e}: {v!r}" for e, v in [(0, first), *pts])
    text = (f"objective s {{\n threat linf(eps = 0.1)\n attack pgd(steps = 2, step_size = 0.01)\n"
            f" loss ce(adv) * beta where beta = {kind}({body})\n}}\n{TRAIN}\n")
    program = check_text(text, "s.adv")
    prog = CompiledObjective(program, generate(program))
    sched = {b.name: b for b in program.loss.bindings}["beta"].value
    for epoch in [0, *[e for e, _ in pts], *[e - 0.5 for e, _ in pts], pts[-1][0] + 7]:
        assert prog.module.beta_at(epoch) == pytest.approx(sched_at(sched, epoch), abs=1e-12)
    if kind == "piecewise":
        for e, v in pts:  # from its epoch on, each piece's value is the schedule's value
            assert prog.module.beta_at(e) == pytest.approx(v)
