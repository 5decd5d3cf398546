"""AutoAttack, standard version (Croce & Hein, ICML 2020), written on advc's attack core.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" (arXiv:2003.01690) runs four attacks in sequence, each only on the samples that are
still robust, and counts a sample as robust only if it survives all of them (worst case per
sample; the paper's "AutoAttack" section):

1. **APGD-CE** -- Auto-PGD on the cross-entropy, 100 iterations, 1 restart ("Auto-PGD"
   section: momentum and a budget-aware step-size schedule instead of a tuned step).
2. **APGD-T** -- Auto-PGD on the targeted DLR loss ("An alternative loss" section), once
   for each of the 9 most likely wrong classes (``num_classes - 1`` when fewer exist),
   100 iterations each.
3. **FAB-T** -- the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020,
   "Minimally distorted adversarial examples with a fast adaptive boundary attack",
   arXiv:1907.02044), 9 targets, 100 iterations each.
4. **Square** -- the score-based black-box Square Attack (Andriushchenko et al., ECCV 2020,
   arXiv:1912.00049, its L-inf algorithm), 5000 queries, p_init = 0.8.

Hyperparameters are those of the published standard version (``fra31/auto-attack``,
``set_version('standard')``); where the reference code and the paper differ in a detail the
comment at that spot says which one is followed.

Why it is built this way: every projection onto the threat ball, every signed / normalised
gradient step and the margin are the functions of :mod:`advc.runtime.attacks`, the same ones
the compiled training objectives use, so "the attack core" exists once. What is genuinely new
here is AutoAttack's own: the DLR losses, APGD's step-size control and momentum, FAB's
projection onto a linearised decision hyperplane intersected with the box (a different
problem from projecting onto the threat ball), and Square's random search.

Everything is batched (no loop over samples): the loops are over iterations, restarts,
target classes and queries, and each iteration works on the whole set of still-robust
samples. Gradients are taken with respect to the input only, with ``torch.autograd.grad``,
so parameter ``.grad`` is never touched; the model runs in eval mode and its mode is
restored afterwards.

Cost (issue #11): the model's passes are the work, so the code avoids the ones whose
outcome is already known, never the search itself: a sample whose verdict is settled
leaves the batch (APGD at its checkpoints, FAB once within eps, Square once fooled; every
row's trajectory is its own, so the others are unaffected), Square skips the model on a
candidate equal to its current point, and when few samples are left the targets of APGD-T
and FAB-T run as rows of one batch (:func:`_over_targets`). On the CPU the convolutions run
channels-last (:func:`_fast_layout`). Iterations, restarts, targets, queries and the random
draws per sample are those of the standard version.

L-inf is complete. L2 is supported by APGD-CE, APGD-T and FAB-T; Square-L2 (a different
search distribution in the Square paper) is not implemented, so the standard
version under L2 raises ``ValueError`` unless ``attacks`` leaves Square out.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from advc.runtime.attacks import (
    ascent_step,
    attack_loss,
    eval_mode,
    linf_box,
    loss_and_input_grad,
    margin,
    per_sample_norm,
    predict_labels,
    project,
)

__all__ = [
    "STANDARD_ATTACKS",
    "AutoAttackResult",
    "apgd",
    "apgd_targeted",
    "autoattack",
    "checkpoint_schedule",
    "dlr_loss",
    "dlr_targeted_loss",
    "eval_mode",
    "fab_targeted",
    "loss_and_input_grad",
    "predict_labels",
    "run_autoattack",
    "square",
]

#: The standard version's attacks, in the order they run.
STANDARD_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")

_TINY = 1e-12


# --------------------------------------------------------------------------------------
# helpers shared with advc.runtime.evaluate
# --------------------------------------------------------------------------------------


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample vector ``v`` shaped to broadcast against the batch ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _dist(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L-inf or L2 size of a perturbation, as a vector."""
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def _check_norm(norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"unknown norm {norm!r}: expected 'linf' or 'l2'")


def _default_generator(x: torch.Tensor, generator: torch.Generator | None, seed: int = 0):
    if generator is not None:
        return generator
    return torch.Generator(device=x.device).manual_seed(seed)


def _channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def _channels_last_grad(module: nn.Module, args: tuple, output: object) -> None:
    """Forward hook of :func:`_fast_layout`: the gradient that will flow back into a 4-D
    channels-last output is made channels-last too (a no-op when it already is)."""
    if (
        isinstance(output, torch.Tensor)
        and output.dim() == 4
        and output.requires_grad
        and output.is_contiguous(memory_format=torch.channels_last)
    ):
        output.register_hook(_channels_last)


#: Models inside a :func:`_fast_layout` block: a nested attack leaves them as they are.
_FAST_MODELS: weakref.WeakSet = weakref.WeakSet()


@contextlib.contextmanager
def _fast_layout(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """On the CPU, run the model channels-last for the duration of an attack: its plain
    ``nn.Conv2d`` weights get that layout, and so do the gradients flowing back into 4-D
    activations; the original weight tensors are put back and the hooks removed afterwards.

    Why: an attack is thousands of passes through the same model, and on the CPU oneDNN's
    convolutions and the pooling kernels around them run several times faster on
    channels-last tensors (docs/benchmarks.md, issue #11). Weights alone are not enough:
    where a network flattens its features, the gradient comes back channels-first and
    PyTorch's pooling backward takes a slow path for it (3.6 ms instead of 0.2 ms for
    288 x 32 x 4 x 4), hence the gradient hooks. Values are untouched, only their order in
    memory. Only modules whose type is exactly ``nn.Conv2d`` have their weight changed:
    their forward hands it straight to ``F.conv2d``, which takes any layout, while a
    subclass or a parametrised weight might ``view`` it. The strides are set explicitly:
    with one input channel ``.contiguous(memory_format=...)`` keeps the old ones (both
    layouts are contiguous then) and oneDNN would keep the whole network channels-first.
    GPUs, non-image inputs, models without such a convolution and ``torch.compile``'d
    models (whose guards would recompile on new strides) are left alone, and so is a model
    already inside this block (nested attacks).
    """
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or hasattr(model, "_orig_mod")
        or model in _FAST_MODELS
    ):
        yield
        return
    swapped: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks: list = []
    _FAST_MODELS.add(model)
    try:
        convs = 0
        for module in model.modules():
            weight = module._parameters.get("weight") if type(module) is nn.Conv2d else None
            if weight is None or weight.dim() != 4 or weight.device.type != "cpu":
                continue
            convs += 1
            _, i, kh, kw = weight.shape
            strides = (i * kh * kw, 1, kw * i, i)  # channels-last, also when i == 1
            if weight.stride() == strides:
                continue
            swapped.append((weight, weight.data))
            weight.data = torch.empty_strided(
                weight.shape, strides, dtype=weight.dtype, device=weight.device
            ).copy_(weight.data)
        if convs:
            hooks = [m.register_forward_hook(_channels_last_grad) for m in model.modules()]
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for weight, data in swapped:
            weight.data = data
        _FAST_MODELS.discard(model)


def _settled(done: torch.Tensor, owner: torch.Tensor | None) -> torch.Tensor:
    """Rows that can stop: the ``done`` ones and, when rows attack the same sample with
    different targets (``owner`` = the sample's id per row), every row of a sample one of
    its rows has fooled."""
    if owner is None:
        return done
    return torch.isin(owner, owner[done])


def _over_targets(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    n_targets: int | None,
    restarts: int,
    rows_per_pass: int | None,
) -> torch.Tensor:
    """The loop over target classes of APGD-T and FAB-T; returns the adversarial points.

    Sequentially (the reference code), target rank r = 2, 3, ... attacks the samples no
    earlier target fooled. Here a pass takes the next g targets at once, as rows (sample,
    target) of one batch, g = ``rows_per_pass`` // (samples still robust), at least 1, at
    most the targets left: when many samples are robust this is the sequential loop (g = 1,
    the same random draws), when few are left one batched pass replaces several tiny ones,
    whose cost is mostly per-operation overhead. ``run(xs, ys, target, owner)`` attacks the
    rows and returns (points, fooled per row); ``owner`` (None when g = 1) tells it which
    rows belong to one sample, so that all of a sample's rows stop once one has fooled it.

    What is reported does not depend on g: a sample is robust iff no target fooled it. What
    g changes is the work: within a pass a sample is attacked with targets a sequential loop
    would have skipped, until the run notices it is fooled. The point kept for a fooled
    sample is the one of its lowest-ranked fooling target in the pass.
    """
    with eval_mode(model), _fast_layout(model, x):
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        with torch.no_grad():
            logits = model(x)
        robust = logits.argmax(dim=1) == y
        order = logits.sort(dim=1).indices  # ascending: rank r is column -r
        n_classes = logits.shape[1]
        last = 1 + max(0, min(9 if n_targets is None else n_targets, n_classes - 1))
        budget = x.shape[0] if rows_per_pass is None else rows_per_pass
        rank = 2
        while rank <= last:
            left = int(robust.sum())
            if left == 0:
                break
            group = max(1, min(last - rank + 1, budget // left))
            for _ in range(restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                sample = idx.repeat(group)  # target-major rows: all samples for rank, rank + 1...
                ranks = torch.arange(rank, rank + group, device=x.device)
                target = order[sample, n_classes - ranks.repeat_interleave(idx.numel())]
                adv, fooled = run(x[sample], y[sample], target, sample if group > 1 else None)
                m = idx.numel()
                for k in reversed(range(group)):  # one target's rows at a time: lowest rank wins
                    hit = idx[fooled[k * m : (k + 1) * m]]
                    x_adv[hit] = adv[k * m : (k + 1) * m][fooled[k * m : (k + 1) * m]]
                    robust[hit] = False
            rank += group
    return x_adv


# --------------------------------------------------------------------------------------
# DLR losses (AutoAttack paper, "An alternative loss")
# --------------------------------------------------------------------------------------


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio: -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3), pi sorting the
    logits in decreasing order.

    Shift- and scale-invariant in the logits, which is why AutoAttack uses it next to the CE:
    a defence that merely rescales its logits cannot flatten it. Needs at least 3 classes.
    The numerator is :func:`advc.runtime.attacks.margin` (max_{i != y} z_i - z_y).
    """
    z = logits.sort(dim=1).values
    return margin(logits, y) / (z[:, -1] - z[:, -3] + _TINY)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    With fewer than 4 classes the denominator does not exist; the loss is then the plain
    targeted logit difference z_t - z_y (the numerator alone), which loses the scale
    invariance but keeps the direction of ascent. That fallback is advc's, not the paper's.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    if logits.shape[1] < 4:
        return z_t - z_y
    z = logits.sort(dim=1).values
    return (z_t - z_y) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + _TINY)


# --------------------------------------------------------------------------------------
# APGD (AutoAttack paper, "Auto-PGD")
# --------------------------------------------------------------------------------------


def checkpoint_schedule(steps: int) -> list[tuple[int, int]]:
    """The checkpoints w_j at which APGD may halve its step size, as (iteration, window).

    Step-size selection of Auto-PGD: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j * N_iter).
    Computed with the reference code's integer arithmetic (first window int(0.22 N), each
    next one int(0.03 N) shorter, never below int(0.06 N), all >= 1), which for N = 100
    gives 22, 41, 57, 70, 80, 87, 93, 99. ``window`` = w_j - w_{j-1}.
    """
    first = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    points: list[tuple[int, int]] = []
    at, window = 0, first
    while at + window <= steps:
        at += window
        points.append((at, window))
        window = max(window - shrink, shortest)
    return points


def _apgd_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """APGD's starting point: x plus noise rescaled onto the surface of the eps-ball
    (L-inf: uniform noise divided by its max-norm; L2: a normal direction), then projected
    onto the box with the shared :func:`project`. Differs from PGD's uniform-in-the-ball
    start, as in the reference code."""
    if norm == "linf":
        t = 2.0 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1.0
        t = t / (_bcast(t.flatten(1).abs().amax(dim=1), t) + _TINY)
    else:
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = t / (per_sample_norm(t) + _TINY)
    return project(x + eps * t, x, eps, norm)


def _apgd_loss(
    kind: str, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """The per-row loss APGD ascends: CE, DLR, or targeted DLR (``target`` given)."""
    if kind == "ce":
        return attack_loss("ce", logits, y)
    if kind == "dlr":
        return dlr_loss(logits, y)
    if kind == "dlr-t":
        return dlr_targeted_loss(logits, y, target)
    raise ValueError(f"unknown APGD loss {kind!r}: expected 'ce', 'dlr' or 'dlr-t'")


def _apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    *,
    target: torch.Tensor | None = None,
    owner: torch.Tensor | None = None,
    eps: float,
    norm: str,
    steps: int,
    rho: float,
    momentum: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run (the paper's APGD algorithm) on a batch of rows; returns (adversarial
    points, fooled mask) per row.

    Update with momentum: z = P(x_k + eta * step(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)
    (x_k - x_{k-1})) with a = ``momentum`` (0.75), except a = 1 at the first iteration.
    Step size eta starts at 2 eps and is halved per sample at a checkpoint w_j when
    Condition 1 (the loss increased in at most a fraction ``rho`` of the steps since w_{j-1};
    ``<=`` as in the reference code, the paper writes ``<``) or Condition 2 (eta was not
    halved at w_{j-1} and the best loss did not improve since) holds; such a sample restarts
    from its best point so far. Condition 2 cannot fire at the first checkpoint.

    Every row's trajectory depends on its own start, gradients and step size only, so a row
    whose verdict is settled (fooled) can stop without changing any other row: at each
    checkpoint the fooled rows leave the batch (their latest misclassified iterate is kept),
    and with ``owner`` (rows that attack the same sample with different targets share an
    owner id) so do the other rows of a sample one of them fooled. The reference code runs
    every row for all ``steps``; the fooled mask it reports is the same, the remaining
    iterations only move a fooled row to another misclassified point. Checking at the
    checkpoints, not every step, costs one host synchronisation per checkpoint.

    One function on purpose: the loop is the paper's APGD iteration in the paper's order, and
    its per-row state (the dict ``s``, compacted as rows finish) is read by every line of it.
    """
    n = x.shape[0]
    x_out = x.clone()
    fooled_out = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_adv = _apgd_start(x, eps, norm, generator)
    lo, hi = linf_box(x, eps) if norm == "linf" else (None, None)  # L2 projects with x
    logits, loss_now, grad = loss_and_input_grad(
        model, x_adv, functools.partial(_apgd_loss, loss, y=y, target=target)
    )
    # per-row state; compacted together when rows finish
    s = {
        "rows": torch.arange(n, device=x.device),
        "owner": owner,
        "x": x,
        "lo": lo,
        "hi": hi,
        "y": y,
        "target": target,
        "x_adv": x_adv,
        "x_prev": x_adv,
        "grad": grad,
        "fooled": logits.argmax(dim=1) != y,
        "x_found": x_adv,  # latest misclassified iterate, returned for fooled rows
        "x_best": x_adv,
        "loss_best": loss_now,
        "grad_best": grad,
        "loss_prev": loss_now,
        "eta": torch.full((n,) + (1,) * (x.dim() - 1), 2.0 * eps, device=x.device, dtype=x.dtype),
        "increases": torch.zeros(n, dtype=torch.long, device=x.device),
        "reduced_last": torch.ones(n, dtype=torch.bool, device=x.device),
        "loss_best_last": loss_now,
    }

    def proj(v: torch.Tensor) -> torch.Tensor:
        if norm == "linf":
            return torch.clamp(v, s["lo"], s["hi"])  # B[x, eps] and the box, cut once
        return project(v, s["x"], eps, norm)

    def finish(done: torch.Tensor) -> None:
        rows = s["rows"][done]
        fooled = s["fooled"][done]
        x_out[rows] = torch.where(_bcast(fooled, x), s["x_found"][done], s["x_best"][done])
        fooled_out[rows] = fooled

    checkpoints = dict(checkpoint_schedule(steps))
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        x_adv, x_prev = s["x_adv"], s["x_prev"]
        z = proj(ascent_step(x_adv, s["grad"], s["eta"], norm))
        x_next = proj(torch.lerp(x_adv, z, a).add_(x_adv - x_prev, alpha=1.0 - a))
        logits, loss_now, grad = loss_and_input_grad(
            model, x_next, functools.partial(_apgd_loss, loss, y=s["y"], target=s["target"])
        )
        wrong = logits.argmax(dim=1) != s["y"]
        improved = loss_now > s["loss_best"]
        s["x_found"] = torch.where(_bcast(wrong, x), x_next, s["x_found"])
        s["fooled"] = s["fooled"] | wrong
        s["x_best"] = torch.where(_bcast(improved, x), x_next, s["x_best"])
        s["grad_best"] = torch.where(_bcast(improved, x), grad, s["grad_best"])
        s["loss_best"] = torch.where(improved, loss_now, s["loss_best"])
        s["increases"] += loss_now > s["loss_prev"]  # Condition 1 counts these since w_{j-1}
        s["loss_prev"] = loss_now
        s["x_prev"], s["x_adv"], s["grad"] = x_adv, x_next, grad

        window = checkpoints.get(i + 1)
        if window is None:
            continue
        cond1 = s["increases"] <= rho * window
        cond2 = ~s["reduced_last"] & (s["loss_best_last"] >= s["loss_best"])
        reduce = cond1 | cond2
        s["eta"] = torch.where(_bcast(reduce, x), s["eta"] / 2.0, s["eta"])
        s["x_adv"] = torch.where(_bcast(reduce, x), s["x_best"], s["x_adv"])
        s["grad"] = torch.where(_bcast(reduce, x), s["grad_best"], s["grad"])
        s["reduced_last"] = reduce
        s["loss_best_last"] = s["loss_best"]
        s["increases"] = torch.zeros_like(s["increases"])
        done = _settled(s["fooled"], s["owner"])
        if i + 1 < steps and bool(done.any()):
            finish(done)
            keep = ~done
            s = {k: v if v is None else v[keep] for k, v in s.items()}
            if s["rows"].numel() == 0:
                return x_out, fooled_out
    finish(torch.ones_like(s["fooled"]))
    return x_out, fooled_out


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD-CE (``loss="ce"``, the shared CE of :func:`attack_loss`) or APGD-DLR
    (``loss="dlr"``, :func:`dlr_loss`); AutoAttack's standard version uses 1 restart of APGD-CE.

    Returns adversarial points: for a sample that any restart fooled, a misclassified point
    in the ball; otherwise the highest-loss point found. Restarts run only on samples still
    classified correctly.
    """
    _check_norm(norm)
    if loss not in ("ce", "dlr"):
        raise ValueError(f"unknown APGD loss {loss!r}: expected 'ce' or 'dlr'")
    generator = _default_generator(x, generator)
    with eval_mode(model), _fast_layout(model, x):
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        robust = predict_labels(model, x) == y
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, fooled = _apgd_run(
                model,
                x[idx],
                y[idx],
                loss,
                eps=eps,
                norm=norm,
                steps=steps,
                rho=rho,
                momentum=momentum,
                generator=generator,
            )
            x_adv[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
    return x_adv


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    n_targets: int | None = 9,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
    rows_per_pass: int | None = None,
) -> torch.Tensor:
    """APGD-T: APGD on the targeted DLR loss, once per target class.

    Targets are the 2nd, 3rd, ... most likely classes on the clean input (the paper uses
    the top 9 classes other than the correct one), ``min(n_targets, num_classes - 1)`` of them;
    each runs only on the samples no earlier target has fooled. When few samples are left,
    several targets run in one batched pass (see :func:`_over_targets`; ``rows_per_pass``
    caps the rows of a pass, by default the number of samples given).
    """
    _check_norm(norm)
    generator = _default_generator(x, generator)

    def run(xs, ys, target, owner):
        return _apgd_run(
            model,
            xs,
            ys,
            "dlr-t",
            target=target,
            owner=owner,
            eps=eps,
            norm=norm,
            steps=steps,
            rho=rho,
            momentum=momentum,
            generator=generator,
        )

    return _over_targets(model, x, y, run, n_targets, restarts, rows_per_pass)


# --------------------------------------------------------------------------------------
# FAB-T (FAB paper)
# --------------------------------------------------------------------------------------


def _argsort_rows(v: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort. On the CPU, numpy's vectorised sort is about six times faster
    than ``torch.sort`` on FAB's many short rows (0.3 vs 1.8 ms for 576 x 64 floats), and
    FAB sorts once per iteration; elsewhere, and for dtypes numpy lacks, ``torch.argsort``.
    The order among equal values does not matter to the projection: tied breakpoints
    share one value of the piecewise-linear function."""
    if v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64) and v.dim() == 2:
        return torch.from_numpy(np.argsort(v.detach().numpy(), axis=1))
    return v.argsort(dim=1)


def _project_hyperplane_box(
    t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str
) -> torch.Tensor:
    """Minimal-norm displacement d with <w, t + d> = b and t + d in [0, 1]^d, per row.

    FAB's projection step (the FAB paper's projection onto a hyperplane intersected with
    the box; solved exactly, by sorting, for
    L-inf and L2). Write r = <w, t> - b and flip signs so that r >= 0: the cheapest way to
    lower <w, x> by r moves coordinate i against sign(w_i) by m_i(lambda) = min(lambda c_i,
    p_i), where p_i is its distance to the box face in that direction and c_i = 1 (L-inf:
    lambda is the max-norm) or |w_i| (L2: lambda scales -w). The decrease h(lambda) =
    sum_i |w_i| m_i(lambda) is piecewise linear and non-decreasing with breakpoints
    p_i / c_i, so sorting them gives lambda with h(lambda) = r in closed form. When even
    the full box corner does not reach the hyperplane (infeasible), the corner is returned,
    as in the reference code.
    """
    r = (w * t).sum(dim=1) - b
    flip = torch.where(r < 0, -1.0, 1.0).to(w.dtype)
    w, r = w * flip[:, None], r * flip
    direction = -torch.sign(w)  # moving against w lowers <w, x>
    reach = torch.where(w > 0, t, 1.0 - t)  # distance to the box face we move towards
    weight = w.abs()
    if norm == "linf":  # c_i = 1: the breakpoints are the distances themselves
        order = _argsort_rows(reach)
        br, wr = reach.gather(1, order), weight.gather(1, order)
        w_reach, w_rate = wr * br, wr  # |w_i| p_i and |w_i| c_i, in breakpoint order
    else:  # c_i = |w_i|; a coordinate with w_i = 0 never moves
        inf = torch.full_like(reach, math.inf)
        breaks = torch.where(weight > 0, reach / weight.clamp_min(_TINY), inf)
        order = _argsort_rows(breaks)
        br, wr = breaks.gather(1, order), weight.gather(1, order)
        w_reach, w_rate = wr * reach.gather(1, order), wr * wr
    done = torch.cumsum(w_reach, dim=1) - w_reach  # saturated coordinates' share before k
    slope = torch.flip(torch.cumsum(torch.flip(w_rate, [1]), dim=1), [1])  # sum_{j>=k}
    h_at_break = torch.where(slope > 0, done + br * slope, done)
    k = (h_at_break < r[:, None]).sum(dim=1)
    feasible = k < t.shape[1]
    k = k.clamp(max=t.shape[1] - 1)[:, None]
    lam = (r - done.gather(1, k).squeeze(1)) / slope.gather(1, k).squeeze(1).clamp_min(_TINY)
    lam = lam.clamp_min(0.0)[:, None]
    move = torch.minimum(lam if norm == "linf" else lam * weight, reach)
    move = torch.where(feasible[:, None], move, reach)
    return direction * move


def _hyperplane_gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FAB-T's f = z_t - z_y, positive exactly when the target beats the true class."""
    return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)


def _fab_run(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    *,
    norm: str,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
    stop_at: float | None = None,
    owner: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One targeted FAB run (the FAB algorithm; no random start, as in AutoAttack's
    single FAB-T restart); returns (closest adversarial found, its distance or +inf).

    Each iteration linearises f = z_t - z_y at x_i into the hyperplane <w, x> = b, projects
    both x_i and the original x_0 onto it (intersected with the box), and steps to the
    biased combination (1 - a)(x_i + eta d_i) + a (x_0 + eta d_0) with a =
    min(|d_i| / (|d_i| + |d_0|), alpha_max) (the biased gradient step; eta = 1.05
    overshoots the boundary).
    A step that lands on the wrong side is recorded if it is the closest so far and then
    pulled back towards x_0 by beta = 0.9 (FAB's "backward step").

    FAB-T has no random draw, so each row's trajectory is its own: with ``stop_at``, a row
    whose closest adversarial is within ``stop_at`` (its verdict under that budget is
    settled) leaves the batch at the next tenth iteration, together with the other rows of
    its ``owner`` (targets batched for one sample); it keeps the adversarial it found.
    (Reusing the pass that checks x_i for the next linearisation does not pay: most iterates
    land on the wrong side and move back, so they would be linearised twice.)

    One function on purpose, like :func:`_apgd_run`: the iteration is the paper's, in order.
    """
    n = x0.shape[0]
    best = x0.clone()
    best_dist = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
    # per-row state; compacted together when rows finish
    s = {
        "rows": torch.arange(n, device=x0.device),
        "owner": owner,
        "x0": x0,
        "flat0": x0.flatten(1),
        "y": y,
        "target": target,
        "x1": x0.clone(),
        "best": x0,
        "best_dist": best_dist.clone(),
    }

    for i in range(steps):
        x0, x1 = s["x0"], s["x1"]
        _, f, grad = loss_and_input_grad(
            model, x1, functools.partial(_hyperplane_gap, y=s["y"], target=s["target"])
        )
        w, flat1, flat0 = grad.flatten(1), x1.flatten(1), s["flat0"]
        m = flat1.shape[0]
        b = (w * flat1).sum(dim=1) - f
        d = _project_hyperplane_box(torch.cat([flat1, flat0]), w.repeat(2, 1), b.repeat(2), norm)
        d1, d0 = d[:m], d[m:]
        a1 = _dist(d1, norm).clamp_min(1e-8)
        a0 = _dist(d0, norm).clamp_min(1e-8)
        alpha = (a1 / (a1 + a0)).clamp(0.0, alpha_max)[:, None]
        step = (flat1 + eta * d1) * (1.0 - alpha) + (flat0 + eta * d0) * alpha
        x1 = step.clamp(0.0, 1.0).view_as(x0)

        is_adv = predict_labels(model, x1) != s["y"]
        dist = _dist(x1 - x0, norm)
        closer = is_adv & (dist < s["best_dist"])
        s["best"] = torch.where(_bcast(closer, x0), x1, s["best"])
        s["best_dist"] = torch.where(closer, dist, s["best_dist"])
        s["x1"] = torch.where(_bcast(is_adv, x0), x0 + beta * (x1 - x0), x1)
        if stop_at is None or (i + 1) % 10:  # every 10th: a host synchronisation
            continue
        done = _settled(s["best_dist"] <= stop_at, s["owner"])
        if bool(done.any()):
            best[s["rows"][done]] = s["best"][done]
            best_dist[s["rows"][done]] = s["best_dist"][done]
            keep = ~done
            s = {k: v if v is None else v[keep] for k, v in s.items()}
            if s["rows"].numel() == 0:
                return best, best_dist
    best[s["rows"]] = s["best"]
    best_dist[s["rows"]] = s["best_dist"]
    return best, best_dist


def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 100,
    n_targets: int | None = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    rows_per_pass: int | None = None,
) -> torch.Tensor:
    """FAB-T: targeted FAB against the 2nd ... (n_targets+1)-th most likely classes.

    FAB minimises the perturbation size rather than working inside the ball, so a point it
    finds counts only if its distance is at most ``eps`` (the reference code's rule); the
    others keep x. Deterministic: the single restart of the standard version has no random
    start. Hyperparameters alpha_max = 0.1, eta = 1.05, beta = 0.9 are AutoAttack's.
    When few samples are left, several targets run in one batched pass
    (:func:`_over_targets`, ``rows_per_pass``).
    """
    _check_norm(norm)

    def run(xs, ys, target, owner):
        adv, dist = _fab_run(
            model,
            xs,
            ys,
            target,
            norm=norm,
            steps=steps,
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            stop_at=eps,
            owner=owner,
        )
        return adv, dist <= eps

    return _over_targets(model, x, y, run, n_targets, 1, rows_per_pass)


# --------------------------------------------------------------------------------------
# Square Attack, L-inf (Square paper, the L-inf algorithm)
# --------------------------------------------------------------------------------------


def _square_p(p_init: float, it: int, queries: int, rescale: bool) -> float:
    """Fraction p of pixels a square covers at iteration ``it``: halved at iterations 10, 50,
    200, 500, 1000, 2000, 4000, 6000, 8000 (the piecewise schedule of the Square paper,
    tuned for 10000 queries). ``rescale`` stretches it to ``queries`` iterations; the
    standard AutoAttack uses 5000 queries without rescaling."""
    if rescale:
        it = int(it / queries * 10000)
    halvings = sum(it > m for m in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _window_masks(
    top: torch.Tensor, left: torch.Tensor, sh: int, sw: int, h: int, w: int
) -> torch.Tensor:
    """(m, 1, h, w) masks of the sh x sw windows with the given top-left corners."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + sh)
    in_cols = (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + sw)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


@functools.lru_cache(maxsize=32)
def _all_windows(sh: int, sw: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Every sh x sw window of an h x w image, position top * (w - sw + 1) + left."""
    top = torch.arange(h - sh + 1, device=device).repeat_interleave(w - sw + 1)
    left = torch.arange(w - sw + 1, device=device).repeat(h - sh + 1)
    return _window_masks(top, left, sh, sw, h, w)


def _square_windows(pos: torch.Tensor, sh: int, sw: int, h: int, w: int) -> torch.Tensor:
    """The windows of one Square iteration, window ``pos`` = top * (w - sw + 1) + left.
    On small images every possible window is built once and looked up (one operation per
    query instead of eight); on large ones (a table of more than 2^22 entries) they are
    built from the corners."""
    across = w - sw + 1
    if (h - sh + 1) * across * h * w > 1 << 22:
        return _window_masks(pos // across, pos % across, sh, sw, h, w)
    return _all_windows(sh, sw, h, w, pos.device)[pos]


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    rescale_schedule: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square Attack (L-inf): random search over vertical-stripe and square perturbations.

    Initialisation: x + eps * (a random sign per column and channel), the "vertical
    stripes". Each iteration draws, per still-robust sample, an s x s window (s =
    round(sqrt(p * H * W)), p from :func:`_square_p`) at a uniform position and a random
    sign per channel, sets the window to x +- eps (the corner of B[x, eps] intersected with
    the box, :func:`linf_box`, on that side), and keeps the candidate if it lowers the margin
    loss z_y - max_{j != y} z_j (the negated :func:`margin`). A sample stops once
    misclassified. It uses only the model's outputs: that is why it is AutoAttack's guard
    against gradient masking.

    Inputs are (B, C, H, W) images; a (B, D) batch is treated as a 1 x 1 x D image.

    Two details differ from the reference code, both following the paper: windows and
    signs are drawn per sample (the reference draws one window per iteration for the whole
    batch: same per-sample distribution), and a window may sit at any of the H - s + 1
    positions (the reference's ``random_int(0, h - s)`` never picks the last one, so it
    never moves the bottom row or right column after the initialisation; on tiny images
    this makes this Square measurably stronger than the reference's).

    One function on purpose: the search is one loop whose state (the compact batch of
    still-robust samples) is read by every line of it; pieces would pass that state around.

    Cost: every coordinate always sits on a face of the box, so a candidate whose window
    already holds the drawn signs equals the current point (half of the 1-pixel windows
    of the late iterations, on a one-channel image); its margin is known and it cannot be
    strictly better, so the model is queried only for the candidates that differ. The
    iteration still counts against ``queries`` and draws its window and signs, so the
    search and its random stream are unchanged. The still-robust samples are kept as a
    compact batch, gathered again only when one of them is fooled.
    """
    if norm != "linf":
        raise ValueError("Square attack: only the L-inf version is implemented")
    generator = _default_generator(x, generator)
    if x.dim() == 4:
        img_shape = x.shape
    elif x.dim() == 2:
        img_shape = (x.shape[0], 1, 1, x.shape[1])
    else:
        raise ValueError(f"Square attack needs (B, C, H, W) or (B, D) inputs, got {tuple(x.shape)}")
    _, c, h, w = img_shape

    def margin_of(img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return margin(model(img.view(img.shape[0], *x.shape[1:])), labels)

    def rand_up(*shape: int) -> torch.Tensor:
        """A random sign per entry, as "up" (True: +eps) or not."""
        return torch.randint(0, 2, shape, generator=generator, device=x.device).bool()

    with eval_mode(model), _fast_layout(model, x):
        x_img = x.detach().reshape(img_shape)
        n = x_img.shape[0]
        lo, hi = linf_box(x_img, eps)
        best = torch.where(rand_up(n, c, 1, w), hi, lo)  # = P(x +- eps): vertical stripes
        best_margin = margin_of(best, y)  # >= 0: misclassified
        # the still-robust samples, as a compact batch
        idx = (best_margin < 0).nonzero().squeeze(1)
        cur = {
            "lo": lo[idx],
            "hi": hi[idx],
            "y": y[idx],
            "best": best[idx],
            "margin": best_margin[idx],
        }
        for it in range(queries):
            m = idx.numel()
            if m == 0:
                break
            p = _square_p(p_init, it, queries, rescale_schedule)
            s = max(round(math.sqrt(p * h * w)), 1)
            sh, sw = min(s, h), min(s, w)
            positions = (h - sh + 1) * (w - sw + 1)  # uniform: top and left uniform
            pos = torch.randint(0, positions, (m,), generator=generator, device=x.device)
            window = _square_windows(pos, sh, sw, h, w)
            face = torch.where(rand_up(m, c, 1, 1), cur["hi"], cur["lo"])
            cand = torch.where(window, face, cur["best"])
            differs = (cand != cur["best"]).flatten(1).any(dim=1).nonzero().squeeze(1)
            if differs.numel() == 0:
                continue
            cand_margin = margin_of(cand[differs], cur["y"][differs])
            better = cand_margin > cur["margin"][differs]
            take = differs[better]
            cur["best"][take] = cand[take]
            cur["margin"][take] = cand_margin[better]
            # a fooling candidate (margin >= 0) always beats a robust point (margin < 0)
            if bool((cand_margin >= 0).any()):  # write back, then drop the fooled
                best[idx], best_margin[idx] = cur["best"], cur["margin"]
                keep = cur["margin"] < 0
                idx = idx[keep]
                cur = {k: v[keep] for k, v in cur.items()}
        best[idx], best_margin[idx] = cur["best"], cur["margin"]
    return best.view_as(x)


# --------------------------------------------------------------------------------------
# the ensemble
# --------------------------------------------------------------------------------------


@dataclass
class AutoAttackResult:
    """What one AutoAttack run found.

    ``x_adv``: for each sample the point of the first attack that fooled it, else x.
    ``robust``: per-sample bool, correct on x and on every attack.
    ``robust_after``: number of robust samples after "clean" and after each attack, in
    order (the progress lines of the reference implementation).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    robust_after: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Robust accuracy in percent."""
        return 100.0 * int(self.robust.sum()) / self.robust.numel() if self.robust.numel() else 0.0


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    steps: int = 100,
    n_targets: int | None = 9,
    square_queries: int = 5000,
    square_p_init: float = 0.8,
    rescale_schedule: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> AutoAttackResult:
    """AutoAttack's standard evaluation: clean accuracy, then
    APGD-CE, APGD-T, FAB-T and Square in turn, each on the samples still robust.

    ``steps`` is the iteration count of APGD and FAB (100 in the standard version),
    ``square_queries`` Square's query budget (5000). ``attacks`` picks a subset (in the
    given order), e.g. to leave Square out under L2.

    Its length is the four components' calls written out one argument per line (the
    formatter's style in this file), so that each reads beside AutoAttack's own table.
    """
    _check_norm(norm)
    if version != "standard":
        raise ValueError(f"AutoAttack version {version!r} is not implemented: only 'standard'")
    names = tuple(STANDARD_ATTACKS if attacks is None else attacks)
    unknown = [a for a in names if a not in STANDARD_ATTACKS]
    if unknown:
        raise ValueError(f"unknown AutoAttack component(s) {unknown}: expected {STANDARD_ATTACKS}")
    if norm == "l2" and "square" in names:
        raise ValueError(
            "AutoAttack under L2: Square-L2 is not implemented; "
            "pass attacks=('apgd-ce', 'apgd-t', 'fab-t')"
        )
    generator = _default_generator(x, generator, seed)
    components: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "apgd-ce": lambda xs, ys: apgd(
            model,
            xs,
            ys,
            eps=eps,
            norm=norm,
            loss="ce",
            steps=steps,
            restarts=1,
            generator=generator,
        ),
        "apgd-t": lambda xs, ys: apgd_targeted(
            model,
            xs,
            ys,
            eps=eps,
            norm=norm,
            steps=steps,
            n_targets=n_targets,
            generator=generator,
            rows_per_pass=x.shape[0],
        ),
        "fab-t": lambda xs, ys: fab_targeted(
            model,
            xs,
            ys,
            eps=eps,
            norm=norm,
            steps=steps,
            n_targets=n_targets,
            rows_per_pass=x.shape[0],
        ),
        "square": lambda xs, ys: square(
            model,
            xs,
            ys,
            eps=eps,
            norm=norm,
            queries=square_queries,
            p_init=square_p_init,
            rescale_schedule=rescale_schedule,
            generator=generator,
        ),
    }
    with eval_mode(model), _fast_layout(model, x):
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        robust = predict_labels(model, x) == y
        counts = {"clean": int(robust.sum())}
        for name in names:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() > 0:
                adv = components[name](x[idx], y[idx])
                fooled = predict_labels(model, adv) != y[idx]
                x_adv[idx[fooled]] = adv[fooled]
                robust[idx[fooled]] = False
            counts[name] = int(robust.sum())
    return AutoAttackResult(x_adv=x_adv, robust=robust, robust_after=counts)


def autoattack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, **kwargs
) -> torch.Tensor:
    """The adversarial points of :func:`run_autoattack` (same keyword arguments)."""
    return run_autoattack(model, x, y, eps=eps, **kwargs).x_adv
