"""AutoAttack (standard version): its components, exactness on linear models, its relation
to PGD, and a cross-check against torchattacks, an implementation no one here wrote."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advc.runtime import autoattack as aa
from advc.runtime.attacks import ascent_step, margin, project, random_start
from advc.runtime.evaluate import AttackConfig, robust_accuracy, robust_flags

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


def _linear_multiclass(eps: float, norm: str, n: int = 200, classes: int = 4, seed: int = 0):
    """A fixed linear classifier and data with a closed-form robust accuracy.

    A sample is robust iff it is classified correctly and, for every other class j, its
    margin z_y - z_j exceeds eps * ||w_y - w_j||_* (the dual norm: L1 for L-inf attacks,
    L2 for L2 attacks). The data keep a distance eps from the box faces, so the ball lies in
    the box; samples whose distance to the decision boundary is within 25 % of eps are
    dropped so that no attack needs to be exact to the last digit."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    w = torch.randn(classes, d, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, classes))
    with torch.no_grad():
        model[1].weight.copy_(w)
        model[1].bias.copy_(-(w @ torch.full((d,), 0.5)))
    x = eps + (1 - 2 * eps) * torch.rand(6 * n, d, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(dim=1)
    flip = torch.rand(6 * n, generator=g) < 0.1
    y = torch.where(flip, (y + 1) % classes, y)
    diff_w = w[y][:, None, :] - w[None, :, :]  # (n, classes, d): w_y - w_j
    dual = diff_w.abs().sum(-1) if norm == "linf" else diff_w.norm(dim=-1)
    gap = z.gather(1, y[:, None]) - z
    dist = torch.where(torch.arange(classes)[None] == y[:, None], torch.inf, gap / dual).amin(dim=1)
    keep = (dist - eps).abs() > 0.25 * eps
    x, y, dist = x[keep][:n], y[keep][:n], dist[keep][:n]
    return model.eval(), x.view(-1, 1, 4, 4), y, 100.0 * (dist > eps).sum().item() / len(y)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)


@pytest.fixture(scope="module")
def digits_cnn():
    """A tiny CNN on scikit-learn's digits (8x8, scaled to [0, 1]), adversarially trained
    for 10 epochs with FGSM + random start (Wong et al. 2020) at eps = 0.1 so that robust
    accuracy is neither 0 nor 100. Returns the model and 200 held-out test samples."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:1700], y[1500:1700]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    eps = 0.1
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        order = torch.randperm(1500, generator=g)
        for i in range(0, 1500, 100):
            xb, yb = x_train[order[i : i + 100]], y_train[order[i : i + 100]]
            xa = random_start(xb, eps, "linf", "uniform", generator=g).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
            xa = project(ascent_step(xa.detach(), grad, 1.25 * eps, "linf"), xb, eps, "linf")
            opt.zero_grad()
            F.cross_entropy(model(xa), yb).backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval(), x_test, y_test, eps


# ----------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------


def test_checkpoint_schedule_is_the_published_one():
    # the Auto-PGD checkpoints with N_iter = 100: w = 0, 22, 41, 57, 70, 80, 87, 93, 99
    assert [at for at, _ in aa.checkpoint_schedule(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert all(window >= 1 for _, window in aa.checkpoint_schedule(5))
    assert aa.checkpoint_schedule(5)[-1][0] <= 5


def test_dlr_losses_are_shift_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    t = (y + 3) % 10
    for loss in (lambda v: aa.dlr_loss(v, y), lambda v: aa.dlr_targeted_loss(v, y, t)):
        assert torch.allclose(loss(z), loss(3.0 * z + 7.0), atol=1e-5)
    # DLR by hand for one sample: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    z0 = torch.tensor([[1.0, 4.0, 2.0, 0.5]])
    assert aa.dlr_loss(z0, torch.tensor([2])).item() == pytest.approx((4.0 - 2.0) / (4.0 - 1.0))
    # targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    value = aa.dlr_targeted_loss(z0, torch.tensor([2]), torch.tensor([0])).item()
    assert value == pytest.approx((1.0 - 2.0) / (4.0 - (1.0 + 0.5) / 2))
    # fewer than 4 classes: the plain targeted logit difference
    z2 = torch.tensor([[0.3, 1.5]])
    assert aa.dlr_targeted_loss(z2, torch.tensor([1]), torch.tensor([0])).item() == pytest.approx(
        -1.2
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_projection_onto_hyperplane_and_box_is_exact(norm):
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(1)
    d = 7
    for trial in range(40):
        t = torch.rand(1, d, generator=g, dtype=torch.float64)
        w = torch.randn(1, d, generator=g, dtype=torch.float64)
        if trial % 4 == 0:
            w[0, :2] = 0.0  # coordinates the hyperplane ignores must not move
        b = (w * t).sum(1) + 0.4 * torch.randn(1, generator=g, dtype=torch.float64)
        d_ours = aa._project_hyperplane_box(t, w, b, norm)[0].numpy()
        tt, ww, bb = t[0].numpy(), w[0].numpy(), b.item()
        bounds = [(-ti, 1 - ti) for ti in tt]
        if norm == "linf":  # min s  s.t. |d_i| <= s, <w, t + d> = b, t + d in the box
            res = optimize.linprog(
                np.r_[np.zeros(d), 1.0],
                A_ub=np.r_[np.c_[np.eye(d), -np.ones(d)], np.c_[-np.eye(d), -np.ones(d)]],
                b_ub=np.zeros(2 * d),
                A_eq=np.r_[ww, 0.0][None],
                b_eq=[bb - ww @ tt],
                bounds=bounds + [(0, None)],
            )
            feasible, best = res.status == 0, (res.x[-1] if res.status == 0 else None)
            size = np.abs(d_ours).max()
        else:
            res = optimize.minimize(
                lambda v: v @ v,
                np.zeros(d),
                jac=lambda v: 2 * v,
                bounds=bounds,
                method="SLSQP",
                constraints=[
                    {
                        "type": "eq",
                        "fun": lambda v, ww=ww, tt=tt, bb=bb: ww @ (tt + v) - bb,
                        "jac": lambda v, ww=ww: ww,
                    }
                ],
                options={"ftol": 1e-14, "maxiter": 500},
            )
            feasible = res.success and abs(ww @ (tt + res.x) - bb) < 1e-8
            best = np.linalg.norm(res.x) if feasible else None
            size = np.linalg.norm(d_ours)
        assert np.all(tt + d_ours >= -1e-12) and np.all(tt + d_ours <= 1 + 1e-12)
        assert np.all(d_ours[ww == 0] == 0)
        if feasible:
            assert ww @ (tt + d_ours) == pytest.approx(bb, abs=1e-9)
            assert size == pytest.approx(best, abs=1e-7)
        else:  # the box corner closest to the hyperplane
            assert abs(ww @ (tt + d_ours) - bb) < abs(ww @ tt - bb)


def test_fab_finds_the_minimal_distance_to_a_linear_boundary():
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=60, classes=2)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    true_dist = (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1) / (
        w[0] - w[1]
    ).abs().sum()
    # where the distance is below 0.05 the optimal corner lies inside the box (the data keep
    # 0.05 from its faces), so the box-free closed form is the true minimal distance
    inside = correct & (true_dist < 0.05)
    x, y, true_dist = x[inside], y[inside], true_dist[inside]
    assert len(y) >= 10
    _, found = aa._fab_run(
        model, x, y, 1 - y, norm="linf", steps=100, alpha_max=0.1, eta=1.05, beta=0.9
    )
    assert torch.all(found >= true_dist * (1 - 1e-5))  # nothing closer than the boundary exists
    assert torch.all(found <= true_dist * 1.01)  # and FAB gets within 1 % of it


# ----------------------------------------------------------------------------------------
# the ensemble on linear models: exact
# ----------------------------------------------------------------------------------------


def test_autoattack_reaches_the_closed_form_robust_accuracy_linf():
    eps = 0.05
    model, x, y, expected = _linear_multiclass(eps, "linf")
    assert 20.0 < expected < 80.0
    result = aa.run_autoattack(model, x, y, eps=eps, square_queries=200)
    assert result.accuracy == pytest.approx(expected)
    # each component alone is sound: no attack can beat the optimum
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        cfg = AttackConfig(name, steps=200 if name == "square" else None)
        assert robust_accuracy(model, x, y, cfg, eps=eps) >= expected - 1e-9, name


def test_autoattack_reaches_the_closed_form_robust_accuracy_l2():
    eps = 0.1
    model, x, y, expected = _linear_multiclass(eps, "l2")
    assert 20.0 < expected < 80.0
    result = aa.run_autoattack(
        model, x, y, eps=eps, norm="l2", attacks=("apgd-ce", "apgd-t", "fab-t")
    )
    assert result.accuracy == pytest.approx(expected)
    assert (result.x_adv - x).flatten(1).norm(dim=1).max().item() <= eps + 1e-6


def test_run_autoattack_bookkeeping():
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=80)
    result = aa.run_autoattack(model, x, y, eps=0.05, square_queries=50)
    counts = list(result.robust_after.values())
    assert list(result.robust_after) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == int(result.robust.sum())
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1) == y, result.robust)
    assert torch.equal(result.x_adv[result.robust], x[result.robust])  # survivors keep x
    assert (result.x_adv - x).abs().max().item() <= 0.05 + 1e-6


def test_square_alone_works_on_flat_inputs_and_lowers_accuracy():
    model, x, y, expected = _linear_multiclass(0.05, "linf", n=100)
    flat = nn.Sequential(nn.Flatten(), model[1])  # (B, 16) inputs
    x_adv = aa.square(flat, x.flatten(1), y, eps=0.05, queries=300)
    assert x_adv.shape == (len(y), 16)
    assert (x_adv - x.flatten(1)).abs().max().item() <= 0.05 + 1e-6
    acc = _accuracy(flat, x_adv, y)
    assert expected - 1e-9 <= acc < _accuracy(flat, x.flatten(1), y)


def test_unsupported_settings_raise():
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=10)
    with pytest.raises(ValueError, match="Square-L2"):
        aa.run_autoattack(model, x, y, eps=0.5, norm="l2")
    with pytest.raises(ValueError, match="only 'standard'"):
        aa.run_autoattack(model, x, y, eps=0.05, version="plus")
    with pytest.raises(ValueError, match="unknown AutoAttack component"):
        aa.run_autoattack(model, x, y, eps=0.05, attacks=("apgd-dlr",))


def test_autoattack_is_deterministic_for_a_seed():
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=40)
    a = aa.autoattack(model, x, y, eps=0.05, square_queries=30, seed=3)
    b = aa.autoattack(model, x, y, eps=0.05, square_queries=30, seed=3)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# a trained CNN: AutoAttack vs PGD, and vs torchattacks
# ----------------------------------------------------------------------------------------


def test_autoattack_is_never_weaker_than_pgd20(digits_cnn):
    model, x, y, eps = digits_cnn
    _, pgd_correct = robust_flags(model, x, y, AttackConfig("pgd", steps=20), eps=eps)
    result = aa.run_autoattack(model, x, y, eps=eps, square_queries=500)
    pgd_acc = 100.0 * pgd_correct.sum().item() / len(y)
    assert 20.0 < pgd_acc < 95.0, "the model must be neither trivially robust nor broken"
    assert result.accuracy <= pgd_acc
    # per sample: (almost) every sample AutoAttack leaves standing also survives PGD-20
    assert int((result.robust & ~pgd_correct).sum()) <= 1


def test_cross_check_against_torchattacks(digits_cnn):
    """advc's PGD-20 and AutoAttack vs torchattacks.PGD and torchattacks.AutoAttack
    (version='standard', n_classes=10) on the same 200 samples at the same eps: within
    1 percentage point.

    To compare like with like: torchattacks' AutoAttack wrapper leaves its components at
    their class defaults (10 iterations, Square with a rescaled schedule), so the test sets
    the standard version's 100 iterations on APGD / APGD-T / FAB and Square's published
    un-rescaled schedule. Square's budget is cut to 1000 queries on both sides to keep the
    runtime modest.
    """
    torchattacks = pytest.importorskip(
        "torchattacks", reason="optional cross-check: pip install --no-deps torchattacks"
    )
    model, x, y, eps = digits_cnn
    queries = 1000

    ours_pgd = robust_accuracy(model, x, y, AttackConfig("pgd", steps=20), eps=eps)
    torch.manual_seed(0)
    x_ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)(x, y)
    theirs_pgd = _accuracy(model, x_ta, y)

    ours_aa = aa.run_autoattack(model, x, y, eps=eps, square_queries=queries).accuracy
    ta = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0
    )
    for component in ta._autoattack.attacks:
        if hasattr(component, "steps"):
            component.steps = 100
        if hasattr(component, "n_queries"):
            component.n_queries = queries
            component.rescale_schedule = False
    x_ta = ta(x, y)
    assert (x_ta - x).abs().max().item() <= eps + 1e-6
    theirs_aa = _accuracy(model, x_ta, y)

    print(
        f"\nPGD-20: advc {ours_pgd:.2f} torchattacks {theirs_pgd:.2f}; "
        f"AA: advc {ours_aa:.2f} torchattacks {theirs_aa:.2f} (n={len(y)}, eps={eps})"
    )
    assert abs(ours_pgd - theirs_pgd) <= 1.0
    assert abs(ours_aa - theirs_aa) <= 1.0


# ----------------------------------------------------------------------------------------
# the fast paths (issue #11): same verdicts as the plain algorithms
# ----------------------------------------------------------------------------------------


def _reachable_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
    """On a linear model, per sample and class j: whether the L-inf eps-ball reaches j's
    side of the pairwise boundary, z_y - z_j < eps * ||w_y - w_j||_1 (the data of
    :func:`_linear_multiclass` keep eps away from the box faces, so the box never binds).
    The true class is marked unreachable."""
    w = model[1].weight.detach()
    with torch.no_grad():
        z = model(x)
    gap = z.gather(1, y[:, None]) - z
    dual = (w[y][:, None, :] - w[None, :, :]).abs().sum(-1)
    reach = gap < eps * dual
    reach[torch.arange(len(y)), y] = False
    return reach


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t"])
def test_targets_in_one_batched_pass_leave_a_sample_robust_iff_no_target_reaches_it(
    attack, monkeypatch
):
    eps = 0.05
    model, x, y, _ = _linear_multiclass(eps, "linf", n=120, classes=4)
    reach = _reachable_targets(model, x, y, eps)
    correct = model(x).argmax(1) == y
    expected = correct & ~reach.any(dim=1)  # 3 targets: every other class
    assert 10 < int(expected.sum()) < int(correct.sum())

    passes = []  # rows of each run: a single pass must hold all 3 targets of every sample
    inner = aa._apgd_run if attack == "apgd-t" else aa._fab_run

    def spy(model, x, *args, **kwargs):
        passes.append(x.shape[0])
        return inner(model, x, *args, **kwargs)

    monkeypatch.setattr(aa, "_apgd_run" if attack == "apgd-t" else "_fab_run", spy)
    fn = aa.apgd_targeted if attack == "apgd-t" else aa.fab_targeted
    kwargs = {"generator": torch.Generator().manual_seed(0)} if attack == "apgd-t" else {}
    x_adv = fn(model, x, y, eps=eps, rows_per_pass=3 * len(y), **kwargs)

    assert passes == [3 * int(correct.sum())]
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, expected)
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert torch.equal(x_adv[robust], x[robust])


def test_fab_t_breaks_the_same_samples_batched_over_targets_as_one_target_at_a_time(digits_cnn):
    # FAB-T draws nothing at random: each (sample, target) trajectory is fixed, so the
    # batched pass and the sequential loop must agree sample by sample
    model, x, y, eps = digits_cnn
    sequential = aa.fab_targeted(model, x, y, eps=eps, steps=30, n_targets=3, rows_per_pass=1)
    batched = aa.fab_targeted(model, x, y, eps=eps, steps=30, n_targets=3, rows_per_pass=10**6)
    with torch.no_grad():
        broken_seq = model(sequential).argmax(1) != y
        broken_bat = model(batched).argmax(1) != y
    assert int(broken_seq.sum()) > int((model(x).argmax(1) != y).sum())  # FAB-T did break some
    assert torch.equal(broken_seq, broken_bat)


@pytest.mark.parametrize("attack", ["apgd", "fab"])
def test_stopping_settled_rows_changes_no_verdict(attack, monkeypatch):
    # every row's trajectory is its own: letting fooled rows run to the end (the reference
    # code) reports the same fooled rows as dropping them from the batch once settled
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=150, classes=4)
    target = model(x).sort(1).indices[:, -2]

    def run():
        if attack == "apgd":
            g = torch.Generator().manual_seed(1)
            _, fooled = aa._apgd_run(model, x, y, "ce", eps=0.05, norm="linf", steps=50,
                                     rho=0.75, momentum=0.75, generator=g)
            return fooled
        _, dist = aa._fab_run(model, x, y, target, norm="linf", steps=50, alpha_max=0.1,
                              eta=1.05, beta=0.9, stop_at=0.05)
        return dist <= 0.05

    early = run()
    monkeypatch.setattr(aa, "_settled", lambda done, owner: torch.zeros_like(done))
    full = run()
    assert 0 < int(early.sum()) < len(y)
    assert torch.equal(early, full)


def _plain_square(model, x, y, eps, queries, generator):
    """The Square L-inf search as the paper writes it, as a test oracle: every still-robust
    sample queries the model at every iteration, windows are cut by slicing. It draws
    window positions and signs in the same order as :func:`advc.runtime.autoattack.square`."""
    n, c, h, w = x.shape
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    up = torch.randint(0, 2, (n, c, 1, w), generator=generator).bool()
    best = torch.where(up, hi, lo)
    with torch.no_grad():
        best_margin = margin(model(best), y)
    for it in range(queries):
        idx = (best_margin < 0).nonzero().squeeze(1)
        m = idx.numel()
        if m == 0:
            break
        s = min(max(round(math.sqrt(aa._square_p(0.8, it, queries, False) * h * w)), 1), h, w)
        pos = torch.randint(0, (h - s + 1) * (w - s + 1), (m,), generator=generator)
        top, left = pos // (w - s + 1), pos % (w - s + 1)
        up = torch.randint(0, 2, (m, c, 1, 1), generator=generator).bool()
        cand = best[idx].clone()
        for k in range(m):
            t, l_ = int(top[k]), int(left[k])
            face = torch.where(up[k], hi[idx[k]], lo[idx[k]])
            cand[k, :, t : t + s, l_ : l_ + s] = face[:, t : t + s, l_ : l_ + s]
        with torch.no_grad():
            cand_margin = margin(model(cand), y[idx])
        better = cand_margin > best_margin[idx]
        best[idx[better]] = cand[better]
        best_margin[idx[better]] = cand_margin[better]
    return best


def test_square_returns_the_plain_search_points_with_fewer_model_queries():
    # skipped candidates (equal to the current point), the compact batch and the window
    # table are exact: for the same draws the points are those of the plain search
    model, x, y, _ = _linear_multiclass(0.05, "linf", n=100)
    model, x = model.double(), x.double()
    rows = []
    hook = model.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    queries = 400
    ours = aa.square(model, x, y, eps=0.05, queries=queries,
                     generator=torch.Generator().manual_seed(5))
    ours_rows, rows[:] = sum(rows), []
    plain = _plain_square(model, x, y, 0.05, queries, torch.Generator().manual_seed(5))
    plain_rows = sum(rows)
    hook.remove()
    with torch.no_grad():
        assert 0 < int((model(plain).argmax(1) != y).sum()) < len(y)
    assert torch.equal(ours, plain)
    assert ours_rows < 0.8 * plain_rows  # about half the late 1-pixel candidates change nothing


@pytest.mark.parametrize("h, w, s", [(8, 8, 3), (5, 7, 2), (64, 64, 1), (64, 64, 5)])
def test_square_windows_are_the_s_by_s_squares_at_their_positions(h, w, s):
    # small images look windows up in a table, large ones (64 x 64 at s = 1: a 2^24 table)
    # build them from the corners: both are the slice [top : top + s, left : left + s]
    across = w - s + 1
    pos = torch.randint(0, (h - s + 1) * across, (50,), generator=torch.Generator().manual_seed(0))
    masks = aa._square_windows(pos, s, s, h, w)
    assert masks.shape == (50, 1, h, w)
    for k, p in enumerate(pos.tolist()):
        expected = torch.zeros(h, w, dtype=torch.bool)
        expected[p // across : p // across + s, p % across : p % across + s] = True
        assert torch.equal(masks[k, 0], expected)


class _WeightViewingConv(nn.Conv2d):
    """A Conv2d subclass that views its weight as a matrix, as weight standardisation does:
    it would break on a channels-last weight, so the layout must leave it alone."""

    def forward(self, x):
        w = self.weight.view(self.out_channels, -1)
        w = (w - w.mean(1, keepdim=True)).view_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_fast_layout_keeps_logits_and_gradients_and_restores_the_model_exactly(digits_cnn):
    model, x, y, eps = digits_cnn
    net = nn.Sequential(_WeightViewingConv(1, 1, 3, padding=1), nn.ReLU(), model)
    before = {name: (p, p.data, p.stride()) for name, p in net.named_parameters()}
    plain_logits, _, plain_grad = aa.loss_and_input_grad(net, x, lambda z: z.logsumexp(1))
    with aa._fast_layout(net, x):
        conv = model[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        assert conv.stride() == (9, 1, 3, 1)  # one input channel: set explicitly
        assert net[0].weight.stride() == (9, 9, 3, 1)  # the subclass is left alone
        logits, _, grad = aa.loss_and_input_grad(net, x, lambda z: z.logsumexp(1))
        with aa._fast_layout(net, x):  # nested: nothing more to do
            assert sum(len(m._forward_hooks) for m in net.modules()) == len(list(net.modules()))
    assert torch.allclose(plain_logits, logits, atol=1e-5)
    assert torch.allclose(plain_grad, grad, atol=1e-6)
    aa.run_autoattack(net, x[:20], y[:20], eps=eps, steps=5, n_targets=2, square_queries=20)
    for name, p in net.named_parameters():
        param, data, stride = before[name]
        assert p is param and p.data.data_ptr() == data.data_ptr() and p.stride() == stride
    assert all(not m._forward_hooks for m in net.modules())
