"""The compiled attack, weights and loss against DESIGN §3 and the seed's Algorithm 1, and the
language's generality (issue #14, sections 8-13): numbers as expressions fold to their values,
per-step learning rates are torch's schedulers, stop rules and normalisation reduce to the
built-ins, every per-sample quantity is its formula.

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
from hypothesis import HealthCheck, assume, given, settings
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


@pytest.mark.parametrize("form", ["minmax", "minmin(tau = 1)"])
def test_attack_mode_train_keeps_batch_norm_in_training_mode_and_restores_the_mode(form):
    """mode = train (fast AT's code): the attack's forwards run in train mode -- batch-norm
    uses and updates batch statistics -- the gradient is still the input's only."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Tanh(), torch.nn.Flatten(),
                              torch.nn.Linear(24, 3))  # batch-norm over images: a lone sample still has 6 values
    model = ModeRecorder(net)
    x, y = batch(0, 8, dtype=torch.float32)
    prog = compiled(spec_text(attack="pgd(steps = 4, step_size = 0.07, init = uniform, mode = train)", form=form))
    for before in (True, False):
        model.train(before)
        model.modes.clear()
        stats = net[1].running_mean.clone()
        prog.attack(model, x, y, epoch=0)
        assert model.modes and all(model.modes)
        assert model.training == before
        assert not torch.equal(net[1].running_mean, stats)  # batch statistics were used and updated
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


# =================================================================================================
# The language's generality (issue #14): numbers as expressions, per-step learning rates, stop
# rules, normalisation and the per-sample quantities, each against a reference.
# =================================================================================================


@functools.cache
def compiled(text: str) -> CompiledObjective:
    program = check_text(text, "g.adv")
    return CompiledObjective(program, generate(program))


def spec_text(threat: str = "linf(eps = 0.25)", attack: str = "pgd(steps = 4, step_size = 0.07, init = none)",
              form: str = "minmax", weight: str = "none", loss: str = "ce(adv)", epochs: int = 10,
              lr: str = "0.1") -> str:
    return (f"objective g {{\n threat {threat}\n attack {attack}\n form {form}\n weight {weight}\n loss {loss}\n}}\n"
            f"train {{ data digits model small_cnn epochs {epochs} optim sgd(lr = {lr}) }}\n")


# --- 8. a constant expression of settings is its value, folded at compile time ---------------------


def _ast_without_spec_hash(source: str) -> str:
    """The module's syntax tree (comments are not in it) with SPEC_HASH blanked: the hash is of
    the spec's text, which differs by construction."""
    import ast

    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SPEC_HASH":
            node.value = ast.Constant("")
    return ast.dump(tree)


STEP_EXPRESSIONS = ["eps / 4", "1.25 * eps", "eps / 4 + 0.001", "2.5 * eps / steps", "(eps + 0.01) / 2",
                    "eps * eps * 4", "eps / (steps + 1) ^ 2"]


@SETTINGS
@given(num=st.integers(1, 64), den=st.integers(1, 255), K=st.integers(1, 12), expr=st.sampled_from(STEP_EXPRESSIONS),
       norm=st.sampled_from(["linf", "l2"]), noise=st.booleans())
def test_a_constant_expression_of_settings_compiles_to_the_code_of_its_literal(num, den, K, expr, norm, noise):
    if norm == "linf" and num > den:
        num = den  # an L-inf radius is at most 1
    value = eval(expr.replace("^", "**"), {"eps": num / den, "steps": K})  # Python's float arithmetic
    tail = ", noise = step_size / 10" if noise else ""
    written = spec_text(f"{norm}(eps = {num}/{den})", f"pgd(steps = {K}, step_size = {expr}{tail})")
    literal = spec_text(f"{norm}(eps = {num}/{den})",
                        f"pgd(steps = {K}, step_size = {value!r}" + (f", noise = {value / 10!r})" if noise else ")"))
    a, b = generate(check_text(written, "g.adv")), generate(check_text(literal, "g.adv"))
    assert _ast_without_spec_hash(a) == _ast_without_spec_hash(b)  # TRAINING_ID included: spelling-free
    assert f"STEP_SIZE = {value!r}" in a


# --- 9. a one-piece schedule is its constant --------------------------------------------------


@SETTINGS
@given(seed=seeds, K=Ks, tau=st.integers(0, 3), form=st.sampled_from(["minmax", "minmin"]),
       init=st.sampled_from(["none", "uniform", "normal"]), noise=st.sampled_from([0.0, 0.01]),
       epoch=st.integers(0, 9))
def test_steps_piecewise_from_zero_is_the_constant_bit_for_bit(seed, K, tau, form, init, noise, epoch):
    model, (x, y) = smooth_model(seed, 6, dtype=torch.float32), batch(seed, 9, dtype=torch.float32)
    f = "minmax" if form == "minmax" else f"minmin(tau = {tau})"
    progs = [compiled(spec_text(attack=f"pgd(steps = {steps}, step_size = 0.07, init = {init}, noise = {noise!r})",
                                form=f)) for steps in (K, f"piecewise(0: {K})")]
    assert hasattr(progs[1].module, "steps_at") and not hasattr(progs[0].module, "steps_at")
    results = []
    for prog in progs:
        torch.manual_seed(seed)
        results.append(prog.attack(model, x, y, epoch=epoch))
    a, b = results
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.kappa, b.kappa) and torch.equal(a.steps, b.steps)
    assert a.passes == b.passes


# --- 10. per-step learning rates are torch's schedulers, step for step ---------------------------


def _torch_lrs(make_scheduler, total: int) -> list[float]:
    """The learning rate each optimiser step uses under a torch scheduler stepped once per step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    out = []
    for i in range(total):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if i < total - 1:
            scheduler.step()
    return out


def _run_lrs(prog: CompiledObjective, epochs: int, steps_per_epoch: int) -> list[float]:
    return [prog.module.lr_at(e, s, steps_per_epoch) for e in range(epochs) for s in range(steps_per_epoch)]


@SETTINGS
@given(epochs=st.integers(1, 6), spe=st.integers(1, 40), top=st.floats(1e-3, 1.0), pct=st.floats(0.05, 0.95),
       div=st.floats(1.5, 100.0), final=st.floats(10.0, 1e5), anneal=st.sampled_from(["cos", "linear"]))
def test_onecycle_is_torch_onecyclelr_step_for_step(epochs, spe, top, pct, div, final, anneal):
    total = epochs * spe
    assume(float(pct * total) != 1.0)  # torch divides by zero there (advc takes the peak at once)
    prog = compiled(spec_text(epochs=epochs, lr=f"onecycle(max = {top!r}, pct_start = {pct!r}, div = {div!r}, "
                                                f"final_div = {final!r}, anneal = {anneal})"))
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=top, total_steps=total, pct_start=pct, div_factor=div, final_div_factor=final,
        anneal_strategy=anneal, cycle_momentum=False), total)
    assert _run_lrs(prog, epochs, spe) == expected


def test_onecycle_whose_rise_is_one_step_starts_at_the_peak_where_torch_divides_by_zero():
    prog = compiled(spec_text(epochs=1, lr="onecycle(max = 0.2, pct_start = 0.1)"))
    lrs = _run_lrs(prog, 1, 10)  # pct_start * total = 1: the rise ends at step 0
    assert lrs[0] == 0.2 and lrs == sorted(lrs, reverse=True)
    with pytest.raises(ZeroDivisionError):
        _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=10, pct_start=0.1), 10)


@SETTINGS
@given(epochs=st.integers(1, 6), spe=st.integers(1, 40), lo=st.sampled_from([0.0, 1e-5, 0.01]),
       top=st.floats(0.02, 1.0), cycles=st.integers(1, 4))
def test_cyclic_is_torch_cycliclr_with_fast_ats_arguments_step_for_step(epochs, spe, lo, top, cycles):
    """fast AT (Wong et al. 2020): CyclicLR(base_lr, max_lr, step_size_up = step_size_down = steps / 2)."""
    total = epochs * spe
    prog = compiled(spec_text(epochs=epochs, lr=f"cyclic(min = {lo!r}, max = {top!r}, cycles = {cycles})"))
    half = total / (2 * cycles)
    expected = _torch_lrs(lambda o: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=lo, max_lr=top, step_size_up=half, step_size_down=half), total)
    assert _run_lrs(prog, epochs, spe) == expected


@SETTINGS
@given(epochs=st.integers(2, 8), spe=st.integers(1, 30), top=st.floats(0.01, 1.0),
       kind=st.sampled_from(["piecewise", "linear", "cosine"]))
def test_epoch_schedules_every_step_follow_the_fractional_epoch(epochs, spe, top, kind):
    """fast AT's 'superconverge' rate, np.interp(t, [0, 2/5 E, E], [0, max, 0]), for linear."""
    import numpy as np

    from advc.compiler.ir import sched_at

    peak = max(1, epochs * 2 // 5)
    first = "0" if kind != "piecewise" else repr(top / 10)
    prog = compiled(spec_text(epochs=epochs, lr=f"{kind}(0: {first}, {peak}: {top!r}, {epochs}: {top / 100!r}, "
                                                "every = step)"))
    sched = prog.program.train.lr.value
    for e in range(epochs):
        for s in range(spe):
            t = e + s / spe
            assert prog.module.lr_at(e, s, spe) == pytest.approx(sched_at(sched, t), rel=1e-12, abs=1e-15)
            if kind == "linear":
                ref = float(np.interp(t, [0, peak, epochs], [0, top, top / 100]))
                assert prog.module.lr_at(e, s, spe) == pytest.approx(ref, rel=1e-9, abs=1e-15)


# --- 11. stop rules: the built-in rule written out, and rules that never stop anybody --------------


@SETTINGS
@given(seed=seeds, K=Ks, tau=taus, rho=st.sampled_from([0.0, 0.3, 1.0]), norm=st.sampled_from(["linf", "l2"]),
       init=st.sampled_from(["none", "uniform"]), noise=st.sampled_from([0.0, 0.01]))
def test_the_default_stop_rule_written_out_is_the_default_bit_for_bit(seed, K, tau, rho, norm, init, noise):
    model, (x, y) = smooth_model(seed, 6, dtype=torch.float32), batch(seed, 12, dtype=torch.float32)
    attack = f"pgd(steps = {K}, step_size = 0.08, init = {init}, noise = {noise!r})"
    default = compiled(spec_text(f"{norm}(eps = 0.3)", attack, f"minmin(tau = {tau}, rho = {rho!r})"))
    written = compiled(spec_text(f"{norm}(eps = 0.3)", attack,
                                 f"minmin(tau = {tau}, rho = {rho!r}, stop = margin > 0 and margin >= rho)"))
    torch.manual_seed(seed)
    a = default.attack(model, x, y, epoch=0)
    torch.manual_seed(seed)
    b = written.attack(model, x, y, epoch=0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.kappa, b.kappa) and torch.equal(a.steps, b.steps)


RULES = ["margin > 1e9", "margin > -1e9", "fosc <= 1e9", "kappa >= 1", "pm < 0 or loss > 2",
         "not (prob(adv) > 0.5)", "grad_norm(inf) >= 0 and steps != 2", "max_wrong_prob(nat) > 0.3"]


@SETTINGS
@given(seed=seeds, K=Ks, extra=st.integers(0, 3), rule=st.sampled_from(RULES), norm=st.sampled_from(["linf", "l2"]),
       init=st.sampled_from(["none", "uniform"]), noise=st.sampled_from([0.0, 0.01]), tau=taus)
def test_a_stop_rule_with_tau_at_least_K_or_one_that_never_fires_is_pgd_k(seed, K, extra, rule, norm, init, noise,
                                                                            tau):
    model, (x, y) = smooth_model(seed, 6, dtype=torch.float32), batch(seed, 9, dtype=torch.float32)
    attack = f"pgd(steps = {K}, step_size = 0.08, init = {init}, noise = {noise!r})"
    minmax = compiled(spec_text(f"{norm}(eps = 0.3)", attack))
    forms = [f"minmin(tau = {K + extra}, stop = {rule})", f"minmin(tau = {tau}, stop = margin > 1e9)"]
    torch.manual_seed(seed)
    a = minmax.attack(model, x, y, epoch=0)
    for form in forms:
        torch.manual_seed(seed)
        b = compiled(spec_text(f"{norm}(eps = 0.3)", attack, form)).attack(model, x, y, epoch=0)
        assert torch.equal(a.x_adv, b.x_adv), form
        assert torch.equal(a.kappa, b.kappa) and torch.equal(a.steps, b.steps), form


# --- 12. normalise = none with weight 1 is no weight --------------------------------------------------

LOSSES = ["ce(adv)", "ce(nat) + 6 * kl(nat, adv)", "bce(adv) + 6 * kl(nat, adv) * (1.0000001 - prob(nat))"]


@SETTINGS
@given(seed=seeds, K=Ks, loss=st.sampled_from(LOSSES), form=st.sampled_from(["minmax", "minmin(tau = 1)"]))
def test_weight_one_not_normalised_is_no_weight_in_loss_and_gradients(seed, K, loss, form):
    model, (x, y) = smooth_model(seed, 6, dtype=torch.float32), batch(seed, 10, dtype=torch.float32)
    attack = f"pgd(steps = {K}, step_size = 0.07, init = uniform)"
    plain = compiled(spec_text(attack=attack, form=form, loss=loss))
    weighted = compiled(spec_text(attack=attack, form=form, weight="1 where normalise = none",
                                  loss=f"({loss}) * weight" if "+" in loss else f"{loss} * weight"))
    outs = []
    for prog in (plain, weighted):
        torch.manual_seed(seed)
        result = prog.attack(model, x, y, epoch=0)
        model.zero_grad()
        value = prog.loss(model, x, y, result, epoch=0)
        value.backward()
        outs.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    (va, ga), (vb, gb) = outs
    assert torch.equal(va, vb)
    assert all(torch.equal(a, b) for a, b in zip(ga, gb, strict=True))


# --- 13. per-sample quantities against float64 references, one sample at a time ----------------------

QUANTITY_NAMES = ["margin", "loss", "prob(adv)", "prob(nat)", "max_wrong_prob(adv)", "max_wrong_prob(nat)", "pm",
                  "grad_norm(1)", "grad_norm(2)", "grad_norm(inf)", "fosc"]
FIELD = {"margin": "margin", "loss": "ce", "prob(adv)": "prob_adv", "prob(nat)": "prob_nat",
         "max_wrong_prob(adv)": "max_wrong_adv", "max_wrong_prob(nat)": "max_wrong_nat", "pm": "pm",
         "grad_norm(1)": "grad_norm_1", "grad_norm(2)": "grad_norm_2", "grad_norm(inf)": "grad_norm_inf",
         "fosc": "fosc"}  # fmt: skip


def _softmax(z: list[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = math.fsum(e)
    return [v / total for v in e]


def reference_quantities(model, x_i, y_i: int, xp_i, eps: float, norm: str, attack_loss: str) -> dict[str, float]:
    """Every per-sample quantity of one sample at the point xp_i, from its formula, in float64.

    g is the gradient of the attack's loss with respect to the input at xp_i (autograd on this
    one sample); everything else is plain Python arithmetic on the logits.
    """
    with torch.no_grad():
        z_nat = model(x_i[None])[0].tolist()
    xp = xp_i[None].clone().requires_grad_(True)
    logits = model(xp)[0]
    z = logits.tolist()
    if attack_loss == "ce":
        objective = torch.logsumexp(logits, 0) - logits[y_i]
    elif attack_loss == "cw":  # -max(z_y - max_{j != y} z_j + 50, 0)
        wrong = torch.cat([logits[:y_i], logits[y_i + 1 :]]).max()
        objective = -torch.clamp(logits[y_i] - wrong + 50.0, min=0.0)
    else:  # kl: KL(p(x) || p(x')) = sum_j p_j(x) (log p_j(x) - log p_j(x'))
        p_nat = torch.tensor(_softmax(z_nat), dtype=logits.dtype)
        objective = (p_nat * (torch.log(p_nat) - torch.log_softmax(logits, 0))).sum()
    (g,) = torch.autograd.grad(objective, xp)
    g = g.flatten().tolist()
    d = (xp_i - x_i).flatten().tolist()
    p, p_nat = _softmax(z), _softmax(z_nat)
    others = [j for j in range(len(z)) if j != y_i]
    top = max(z)
    out = {
        "margin": max(z[j] for j in others) - z[y_i],
        "loss": top + math.log(math.fsum(math.exp(v - top) for v in z)) - z[y_i],
        "prob(adv)": p[y_i], "prob(nat)": p_nat[y_i],
        "max_wrong_prob(adv)": max(p[j] for j in others), "max_wrong_prob(nat)": max(p_nat[j] for j in others),
        "grad_norm(1)": math.fsum(abs(v) for v in g), "grad_norm(2)": math.sqrt(math.fsum(v * v for v in g)),
        "grad_norm(inf)": max(abs(v) for v in g),
    }  # fmt: skip
    out["pm"] = out["prob(adv)"] - out["max_wrong_prob(adv)"]
    dual = out["grad_norm(1)"] if norm == "linf" else out["grad_norm(2)"]
    out["fosc"] = max(0.0, eps * dual - math.fsum(a * b for a, b in zip(d, g, strict=True)))  # >= 0 in the ball
    return out


def test_fosc_at_the_box_corners_is_not_negative_so_a_fosc_weight_runs():
    """Regression: in float32, eps * ||g||_1 - <x' - x, g> rounds below 0 for a few samples at
    the corners of the box, and `weight fosc` stopped training with "negative for 3 samples"."""
    from advc.runtime.attacks import fosc

    prog = compiled(spec_text("linf(eps = 0.1)", "pgd(steps = 2, step_size = 0.1, init = uniform)",
                              weight="fosc where normalise = none", loss="ce(adv) * weight"))
    torch.manual_seed(1)  # the model, the data and the random start
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    x, y = torch.rand((2048, 1, 8, 8)), torch.randint(0, 10, (2048,))
    result = prog.attack(model, x, y, epoch=0)
    xa = result.x_adv.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
    g, d = grad.flatten(1), (result.x_adv - x).flatten(1)
    assert (0.1 * g.abs().sum(1) - (d * g).sum(1) < 0).any()  # the rounding this guards against happens
    assert (fosc(grad, result.x_adv - x, 0.1, "linf") >= 0).all() and (result.fosc >= 0).all()
    assert torch.equal(prog.weights(result, epoch=0), result.fosc)


@SETTINGS
@given(seed=seeds, K=Ks, norm=st.sampled_from(["linf", "l2"]), attack_loss=st.sampled_from(["ce", "cw", "kl"]),
       form=st.sampled_from(["minmax", "minmin(tau = 1)"]))
def test_quantities_at_the_final_point_equal_their_float64_formulas(seed, K, norm, attack_loss, form):
    eps = 0.3
    every = " + ".join(f"abs({q})" for q in QUANTITY_NAMES)  # a weight reading each of them
    prog = compiled(spec_text(f"{norm}(eps = {eps})",
                              f"pgd(steps = {K}, step_size = 0.08, init = uniform, loss = {attack_loss})", form,
                              weight=f"{every} + 1 where normalise = none", loss="ce(adv) * weight"))
    model, (x, y) = smooth_model(seed, 6), batch(seed, 8)
    torch.manual_seed(seed)
    result = prog.attack(model, x, y, epoch=0)
    refs = [reference_quantities(model, x[i], int(y[i]), result.x_adv[i], eps, norm, attack_loss)
            for i in range(len(x))]
    total = torch.ones(len(x), dtype=torch.float64)
    for q in QUANTITY_NAMES:
        ref = torch.tensor([r[q] for r in refs], dtype=torch.float64)
        got = getattr(result, FIELD[q])
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12), (q, got, ref)
        total += ref.abs()
    # and the weight reads exactly those fields
    assert torch.allclose(prog.weights(result, epoch=0), total, rtol=1e-9, atol=1e-12)


OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
       "==": lambda a, b: a == b, "!=": lambda a, b: a != b}  # fmt: skip


@st.composite
def stop_rules(draw):
    """One or two comparisons of quantities, joined by and / or or negated by not. A float
    quantity's threshold is a quantile of its values at the start (filled in by the test), so the
    rule splits the batch; kappa and steps compare with whole numbers."""
    def comparison():
        q = draw(st.sampled_from([*QUANTITY_NAMES, *["kappa", "steps"] * 3]))  # a third count steps
        whole = q in ("kappa", "steps")
        op = draw(st.sampled_from(list(OPS) if whole else ["<", "<=", ">", ">="]))
        return q, op, draw(st.integers(0, 4) if whole else st.floats(0.05, 0.95))

    join = draw(st.sampled_from(["", "and", "or", "not"]))
    return [comparison(), *([comparison()] if join in ("and", "or") else [])], join


def stop_rule_reference(model, x, y, x0, K, tau, eps, alpha, norm, attack_loss, fires):
    """Early-stopped PGD with a stop rule, one sample at a time: before each step the sample's
    quantities at its current iterate (kappa counting this check, steps those taken) decide."""
    out, kappas, steps, closest = [], [], [], math.inf
    for i in range(len(x)):
        xi, budget, kappa, taken = x0[i].clone(), tau, 0, 0
        for _ in range(K):
            v = reference_quantities(model, x[i], int(y[i]), xi, eps, norm, attack_loss)
            if v["margin"] <= 0:
                kappa += 1
            v["kappa"], v["steps"] = kappa, taken
            fired, near = fires(v)
            closest = min(closest, near)
            if fired and budget == 0:
                break
            if fired:
                budget -= 1
            xp = xi[None].clone().requires_grad_(True)
            logits = model(xp)
            if attack_loss == "ce":
                objective = F.cross_entropy(logits, y[i : i + 1], reduction="sum")
            else:
                wrong = logits[0].clone()
                wrong[int(y[i])] = -math.inf
                objective = -torch.clamp(logits[0, int(y[i])] - wrong.max() + 50.0, min=0.0)
            (g,) = torch.autograd.grad(objective, xp)
            g = g[0]
            if norm == "linf":
                xi = torch.clamp(torch.min(torch.max(xi + alpha * g.sign(), x[i] - eps), x[i] + eps), 0, 1)
            else:
                xi = xi + alpha * g / (g.norm() + 1e-12)
                delta = xi - x[i]
                xi = torch.clamp(x[i] + delta * min(eps / (float(delta.norm()) + 1e-12), 1.0), 0, 1)
            taken += 1
        out.append(xi.detach())
        kappas.append(kappa)
        steps.append(taken)
    return torch.stack(out), torch.tensor(kappas), torch.tensor(steps), closest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=seeds, K=Ks, tau=st.integers(0, 2), rule=stop_rules(), norm=st.sampled_from(["linf", "l2"]),
       attack_loss=st.sampled_from(["ce", "cw"]))
def test_a_stop_rule_stops_exactly_the_samples_its_float64_quantities_select_at_each_step(seed, K, tau, rule, norm,
                                                                                         attack_loss):
    comparisons, join = rule
    _check_stop_rule(seed, K, tau, comparisons, join, norm, attack_loss)


@pytest.mark.parametrize("q", [*QUANTITY_NAMES, "kappa", "steps"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=seeds, K=st.integers(2, 6), op=st.sampled_from(["<", ">="]), norm=st.sampled_from(["linf", "l2"]))
def test_each_quantity_in_a_stop_rule_is_read_at_the_current_iterate(q, seed, K, op, norm):
    _check_stop_rule(seed, K, 0, [(q, op, 2 if q in ("kappa", "steps") else 0.5)], "", norm, "ce")


def _check_stop_rule(seed, K, tau, comparisons, join, norm, attack_loss):
    """Compile the rule (float thresholds at quantiles of the start values), attack, and compare
    with the per-sample reference: the same steps and kappa, the same points."""
    import numpy as np

    eps, alpha = 0.3, 0.08
    model, (x, y) = smooth_model(seed, 6), batch(seed, 8)
    torch.manual_seed(seed)
    x0 = random_start(x, eps, norm, "uniform")
    start = [reference_quantities(model, x[i], int(y[i]), x0[i], eps, norm, attack_loss) for i in range(len(x))]
    parts, binds, thresholds = [], {}, []
    for i, (q, op, at) in enumerate(comparisons, start=1):
        if q in ("kappa", "steps"):
            c = at
            parts.append(f"{q} {op} {c}")
        else:
            c = float(np.quantile([v[q] for v in start], at))
            binds[f"c{i}"] = c
            parts.append(f"{q} {op} c{i}")
        thresholds.append((q, op, c))
    text = f"not {parts[0]}" if join == "not" else f" {join} ".join(parts)
    where = (" where " + ", ".join(f"{k} = {v!r}" for k, v in binds.items())) if binds else ""
    prog = compiled(spec_text(f"{norm}(eps = {eps})",
                              f"pgd(steps = {K}, step_size = {alpha}, init = uniform, loss = {attack_loss})",
                              f"minmin(tau = {tau}, stop = {text}){where}"))
    torch.manual_seed(seed)
    result = prog.attack(model, x, y, epoch=0)

    def fires(v):  # the rule, and how close a float quantity came to its threshold
        hits = [OPS[op](v[q], c) for q, op, c in thresholds]
        fired = (not hits[0]) if join == "not" else all(hits) if join == "and" else any(hits)
        near = min((abs(v[q] - c) for q, _, c in thresholds if q not in ("kappa", "steps")), default=math.inf)
        return fired, near

    ref_x, ref_kappa, ref_steps, closest = stop_rule_reference(model, x, y, x0, K, tau, eps, alpha, norm, attack_loss,
                                                                fires)
    assume(closest > 1e-9)  # a value within rounding of its threshold may fall either way
    assert torch.equal(result.steps, ref_steps), text
    assert torch.equal(result.kappa, ref_kappa), text
    assert torch.allclose(result.x_adv, ref_x, atol=1e-9, rtol=0), text
