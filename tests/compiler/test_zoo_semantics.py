"""The zoo's training structures against their definitions and the official code's loops.

Free AT (replayed minibatches, one backward for model and perturbation), AWP (weights perturbed
around each update), the curriculum (K following the epoch), Dynamic AT (FOSC stop rule), MAIL
(weights from the probabilistic margin) and fast AT (FGSM in train mode): each law is a property
on small models, against a naive reference written from the paper or the official training loop.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advc.api import CompiledObjective
from advc.compiler.check import check_text
from advc.compiler.codegen import generate

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRAIN = "train { data digits model small_cnn epochs 3 optim sgd(lr = 0.1) }"
seeds = st.integers(0, 10_000)


@functools.cache
def compiled(body: str) -> CompiledObjective:
    program = check_text(f"objective z {{\n{body}\n}}\n{TRAIN}\n", "z.adv")
    return CompiledObjective(program, generate(program))


def bn_model(seed: int, d: int = 6, classes: int = 3) -> torch.nn.Module:
    """A tiny model with batch norm (its statistics are what train mode changes)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                               torch.nn.Linear(8, classes))


def batch(seed: int, n: int = 10, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 2, 3), generator=g), torch.randint(0, classes, (n,), generator=g)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# --- AWP ---------------------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds)
def test_awp_with_gamma_zero_is_bit_identical_to_no_perturbation(seed):
    plain = compiled(" threat linf(eps = 0.1)\n attack pgd(steps = 3, step_size = 0.03)\n loss ce(adv)")
    awp = compiled(" threat linf(eps = 0.1)\n attack pgd(steps = 3, step_size = 0.03)\n loss ce(adv)\n"
                   " perturb weights(gamma = 0)")
    x, y = batch(seed)
    a, b = bn_model(seed), bn_model(seed)
    opt_a, opt_b = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (a, b))
    for step in range(3):
        torch.manual_seed(step)
        ra, la = plain.train_step(a, opt_a, x, y, epoch=0)
        torch.manual_seed(step)
        rb, lb = awp.train_step(b, opt_b, x, y, epoch=0)
        assert torch.equal(la, lb) and torch.equal(ra.x_adv, rb.x_adv)
    assert same_state(a, b)


def test_awp_moves_each_weight_matrix_by_gamma_times_its_norm_and_back():
    from advc.runtime.awp import WeightPerturbation

    prog = compiled(" threat linf(eps = 0.1)\n attack pgd(steps = 2, step_size = 0.05)\n loss ce(adv)\n"
                    " perturb weights(gamma = 0.01)")
    model, (x, y) = bn_model(3), batch(3)
    before = copy.deepcopy(model.state_dict())
    awp = WeightPerturbation(model, gamma=0.01, lr=0.01, steps=1)
    result = prog.attack(model, x, y, epoch=0)
    moved = awp.perturb(prog.loss, x, y, result, 0)
    assert set(moved) == {"1.weight", "4.weight"}  # weight matrices only: not biases, not batch norm
    for name, w in model.state_dict().items():
        if name in moved:
            assert torch.allclose((w - before[name]).norm(), 0.01 * before[name].norm(), rtol=1e-5)
        else:
            assert torch.equal(w, before[name])
    awp.restore(moved)
    for name, w in model.state_dict().items():
        assert torch.allclose(w, before[name], atol=1e-7)


def test_awp_direction_increases_the_loss():
    from advc.runtime.awp import WeightPerturbation

    prog = compiled(" threat linf(eps = 0.1)\n attack pgd(steps = 2, step_size = 0.05)\n loss ce(adv)")
    model, (x, y) = bn_model(5), batch(5, n=32)
    model.eval()  # the same batch statistics before and after: only the weights differ
    result = prog.attack(model, x, y, epoch=0)
    before = prog.loss(model, x, y, result, 0).item()
    WeightPerturbation(model, gamma=0.05, lr=0.01, steps=1).perturb(prog.loss, x, y, result, 0)
    model.eval()
    assert prog.loss(model, x, y, result, 0).item() > before


# --- Free AT -----------------------------------------------------------------------------------


FREE = " threat linf(eps = 0.1)\n attack pgd(steps = 1, step_size = eps, init = none)\n form free(replay = {m})\n loss ce(adv)"


@SETTINGS
@given(seed=seeds)
def test_free_with_one_replay_from_zero_is_one_fgsm_step_with_the_same_backward(seed):
    prog = compiled(FREE.format(m=1))
    x, y = batch(seed)
    model, ref = bn_model(seed), bn_model(seed)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref))
    delta = torch.zeros_like(x)
    prog.train_step(model, opt, x, y, epoch=0, delta=delta)
    # the official loop: one forward on clamp(x + 0), one backward, the noise's sign step, then the update
    noise = torch.zeros_like(x, requires_grad=True)
    ref.train()
    loss = F.cross_entropy(ref(torch.clamp(x + noise, 0, 1)), y)
    ref_opt.zero_grad()
    loss.backward()
    expected = torch.clamp(0.1 * noise.grad.sign(), -0.1, 0.1)
    ref_opt.step()
    assert torch.equal(delta, expected)  # the perturbation: one FGSM step of size eps
    assert same_state(model, ref)  # the model: the gradient of that same backward, at the point before the step


@SETTINGS
@given(seed=seeds, m=st.integers(1, 4))
def test_free_perturbation_stays_in_the_ball_and_the_box_across_minibatches(seed, m):
    prog = compiled(FREE.format(m=m))
    model = bn_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    delta = None
    for b in range(4):
        x, y = batch(seed + b)
        delta = torch.zeros_like(x) if delta is None else delta
        for _ in range(m):
            result, _ = prog.train_step(model, opt, x, y, epoch=0, delta=delta)
            assert float(delta.abs().max()) <= 0.1 + 1e-7  # the ball, kept across batches
            assert float((result.x_adv - x).abs().max()) <= 0.1 + 1e-7
            assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1  # the box
    assert float(delta.abs().sum()) > 0  # it moved


# --- curriculum and Dynamic AT -------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, K=st.integers(1, 5), epoch=st.integers(0, 2))
def test_a_curriculum_with_constant_K_is_pgd_k_bit_for_bit(seed, K, epoch):
    plain = compiled(f" threat linf(eps = 0.1)\n attack pgd(steps = {K}, step_size = 0.03)\n loss ce(adv)")
    curriculum = compiled(f" threat linf(eps = 0.1)\n attack pgd(steps = piecewise(0: {K}, 2: {K}), "
                          f"step_size = 0.03)\n loss ce(adv)")
    model, (x, y) = bn_model(seed).eval(), batch(seed)
    torch.manual_seed(seed)
    a = plain.attack(model, x, y, epoch=epoch)
    torch.manual_seed(seed)
    b = curriculum.attack(model, x, y, epoch=epoch)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.kappa, b.kappa) and torch.equal(a.steps, b.steps)


@SETTINGS
@given(seed=seeds, K=st.integers(1, 6))
def test_dynamic_at_with_threshold_minus_infinity_is_pgd_k(seed, K):
    plain = compiled(f" threat linf(eps = 0.1)\n attack pgd(steps = {K}, step_size = 0.03)\n loss ce(adv)")
    dynamic = compiled(f" threat linf(eps = 0.1)\n attack pgd(steps = {K}, step_size = 0.03)\n"
                       f" form minmin(tau = 0, stop = steps > 0 and fosc <= c) where c = -inf\n loss ce(adv)")
    model, (x, y) = bn_model(seed).eval(), batch(seed)
    torch.manual_seed(seed)
    a = plain.attack(model, x, y, epoch=0)
    torch.manual_seed(seed)
    b = dynamic.attack(model, x, y, epoch=0)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.steps, b.steps)


# --- MAIL ---------------------------------------------------------------------------------------


@SETTINGS
@given(seed=seeds, slope=st.floats(0.5, 10), bias=st.floats(-1, 1))
def test_mail_weights_equal_a_per_sample_float64_reference(seed, slope, bias):
    prog = compiled(f" threat linf(eps = 0.1)\n attack pgd(steps = 2, step_size = 0.05)\n"
                    f" weight 3 * sigmoid(slope * (bias - pm)) where slope = {slope!r}, bias = {bias!r}, "
                    f"normalise = none\n loss ce(adv) * weight")
    model, (x, y) = bn_model(seed).double().eval(), batch(seed)
    x = x.double()
    result = prog.attack(model, x, y, epoch=0)
    w = prog.weights(result, epoch=0)
    with torch.no_grad():
        logits = model(result.x_adv)
    for i in range(len(y)):  # mail_loss.py: PM() = (largest wrong probability) - p_y, weight 3 sigmoid(slope (PM + bias))
        p = torch.softmax(logits[i], 0).tolist()
        wrong = max(v for j, v in enumerate(p) if j != int(y[i]))
        code_pm = wrong - p[int(y[i])]
        expected = 3.0 / (1.0 + __import__("math").exp(-slope * (code_pm + bias)))
        assert abs(float(w[i]) - expected) <= 1e-9 * max(1.0, expected)


# --- fast AT: the attack in train mode -------------------------------------------------------------


def test_fast_at_train_mode_updates_batch_norm_exactly_as_its_official_loop():
    """locuslab/fast_adversarial train_fgsm.py: model.train() for the epoch; delta uniform in [-eps, eps],
    clamped to the box; one forward/backward for the FGSM step (BN statistics move); delta step, clamps;
    second forward (they move again), backward, step."""
    prog = compiled(" threat linf(eps = 0.1)\n attack pgd(steps = 1, step_size = 1.25 * eps, init = uniform, "
                    "mode = train)\n loss ce(adv)")
    x, y = batch(11, n=16)
    model, ref = bn_model(11), bn_model(11)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, ref))
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        prog.train_step(model, opt, x, y, epoch=0, generator=gen)
        # the official loop, written out; the uniform start from the same generator draw
        eps, alpha = 0.1, 0.125
        g = torch.Generator().manual_seed(step)
        delta = ((2 * torch.rand(x.shape, generator=g) - 1) * eps)
        delta = torch.clamp(delta, -x, 1 - x)  # clamp(delta, lower_limit - X, upper_limit - X)
        delta.requires_grad_(True)
        ref.train()
        loss = F.cross_entropy(ref(x + delta), y)
        loss.backward()
        grad = delta.grad.detach()
        delta = torch.clamp(delta.detach() + alpha * torch.sign(grad), -eps, eps)
        delta = torch.clamp(delta, -x, 1 - x)
        loss = F.cross_entropy(ref(x + delta), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        bn, ref_bn = model[2], ref[2]
        assert torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var, ref_bn.running_var, atol=1e-6)
        assert int(bn.num_batches_tracked) == int(ref_bn.num_batches_tracked) == 2 * (step + 1)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
