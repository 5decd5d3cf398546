"""The attack core: the few tensor operations every PGD-style attack in advc is made of.

Generated training modules (the compiled objectives) and the evaluation attacks both call
these functions, so the mathematics of a PGD step, the projection onto the threat ball and
the attack losses exist exactly once.

Conventions: inputs live in [0, 1]; ``x`` is the natural batch, ``x_adv`` the current
adversarial batch of the same shape; ``norm`` is ``"linf"`` or ``"l2"``; ``eps`` and
``step_size`` are Python floats. Everything is batched: no function loops over samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from advc.runtime.losses import cross_entropy, kl_div

__all__ = [
    "ascent_step",
    "attack_loss",
    "eval_mode",
    "fosc",
    "grad_norm",
    "linf_box",
    "loss_and_input_grad",
    "margin",
    "per_sample_norm",
    "pgd",
    "predict_labels",
    "project",
    "random_start",
]

_TINY = 1e-12


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample of a batch, shaped to broadcast against the batch."""
    flat = t.flatten(1).norm(p=2, dim=1)
    return flat.view(-1, *([1] * (t.dim() - 1)))


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B[x, eps] intersected with [0, 1]^d for L-inf is a box: its lower and upper corners.

    Computed once per attack, it turns every later projection into one clamp.
    """
    return torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto B[x, eps] intersected with the box [0, 1]^d.

    L-inf: a coordinate-wise clamp, which is the exact projection onto the intersection.
    L2: scale the perturbation back onto the sphere, then clamp to the box; because ``x``
    is inside the box, clamping only moves coordinates towards ``x``, so the result stays
    inside the ball.
    """
    if norm == "linf":
        lo, hi = linf_box(x, eps)  # clamping to the ball, then the box, is clamping to their intersection
        return torch.clamp(x_adv, lo, hi)
    if norm == "l2":
        delta = x_adv - x
        scale = torch.clamp(eps / (per_sample_norm(delta) + _TINY), max=1.0)
        return torch.clamp(x + delta * scale, 0.0, 1.0)
    raise ValueError(f"unknown norm {norm!r}")  # pragma: no cover - the checker only lets linf and l2 through


def random_start(
    x: torch.Tensor,
    eps: float,
    norm: str,
    init: str,
    scale: float = 0.001,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The starting point x^0 of PGD.

    ``none``: x itself. ``uniform``: uniform in the ball (L-inf: U(-eps, eps) per coordinate,
    as the published code; L2: a uniformly random direction with radius eps * U(0, 1)).
    ``normal``: x + scale * N(0, 1), the TRADES start (scale 0.001 in the published code).
    The result is projected onto B[x, eps] and the box.
    """
    if init == "none":
        return x.detach().clone()
    if init == "uniform":
        if norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2.0 * noise - 1.0) * eps
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            direction = direction / (per_sample_norm(direction) + _TINY)
            radius = torch.rand(
                (x.shape[0],) + (1,) * (x.dim() - 1),
                generator=generator,
                device=x.device,
                dtype=x.dtype,
            )
            delta = direction * radius * eps
    elif init == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = scale * noise
    else:  # pragma: no cover
        raise ValueError(f"unknown init {init!r}")
    return project(x.detach() + delta, x.detach(), eps, norm)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """One ascent step before projection: sign of the gradient (L-inf) or its L2 direction."""
    if norm == "linf":
        if isinstance(step_size, (int, float)):
            return torch.add(x_adv, grad.sign(), alpha=step_size)  # one fused kernel
        return x_adv + step_size * grad.sign()  # per-sample step sizes (APGD)
    return x_adv + step_size * grad / (per_sample_norm(grad) + _TINY)


def grad_norm(grad: torch.Tensor, p: float) -> torch.Tensor:
    """||g||_p of each sample's input gradient (p = 1, 2 or math.inf)."""
    return grad.flatten(1).norm(p=p, dim=1)


def fosc(grad: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Dynamic AT's first-order stationarity condition of each sample, eps * ||g||_* - <delta, g>,
    with ||.||_* the dual norm of the threat's (L1 for L-inf, L2 for L2) and delta = x' - x.

    It is >= 0 inside the ball and 0 exactly at a first-order maximum of the attack loss; float32
    rounding at the box's corners can put it a hair below 0, clamped here (a weight reading it
    must never be negative).
    """
    g, d = grad.flatten(1), delta.flatten(1)
    dual = g.abs().sum(dim=1) if norm == "linf" else g.norm(p=2, dim=1)
    return (eps * dual - (d * g).sum(dim=1)).clamp(min=0.0)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{y' != y} z_{y'} - z_y per sample: positive exactly when the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


def attack_loss(
    kind: str,
    logits: torch.Tensor,
    y: torch.Tensor,
    nat_logits: torch.Tensor | None = None,
    confidence: float = 50.0,
) -> torch.Tensor:
    """Per-sample loss the attack ascends.

    ``ce``: cross-entropy. ``cw``: the CW margin loss of the published evaluation code,
    -max(z_y - max_{y' != y} z_{y'} + confidence, 0) (confidence 50 as in GAIRAT's CW-inf). ``kl``: KL(p(x) || p(x_adv)) summed over classes,
    the TRADES attack loss (needs ``nat_logits``).
    """
    if kind == "ce":
        return cross_entropy(logits, y)
    if kind == "cw":
        return -torch.clamp(confidence - margin(logits, y), min=0.0)
    if kind == "kl":
        if nat_logits is None:  # pragma: no cover - generated code always passes it
            raise ValueError("the kl attack loss needs the natural logits")
        return kl_div(nat_logits, logits)
    raise ValueError(f"unknown attack loss {kind!r}")  # pragma: no cover


# --------------------------------------------------------------------------------------
# evaluation PGD and what every evaluation attack shares
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (attacks never see dropout or batch-norm updates), then
    restore whatever mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def loss_and_input_grad(
    model: nn.Module,
    x_adv: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, per-sample loss and the gradient of the summed loss with respect to the input.

    ``torch.autograd.grad`` on the input alone: parameter ``.grad`` fields are never written,
    so an evaluation cannot leak gradients into a later optimiser step. A model whose output
    does not depend differentiably on its input (the extreme of gradient masking) gets a
    zero gradient instead of an autograd error, so the attack degrades to its random start
    and the sanity checks can flag it.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = loss_fn(logits)
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x_adv, allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(x_adv)
    return logits.detach(), loss.detach(), grad.detach()


def predict_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted classes, without building a graph."""
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _pgd_run(model, x, y, *, eps, norm, steps, step_size, loss, init, confidence, generator) -> torch.Tensor:
    """x^0 = random start; x^{t+1} = Π(x^t + α·step(∇ℓ)): DESIGN.md §3's PGD-K, evaluated
    like the published code at the final iterate (not the best one)."""
    x_adv = random_start(x, eps, norm, init, generator=generator)
    for _ in range(steps):
        _, _, grad = loss_and_input_grad(model, x_adv, lambda z: attack_loss(loss, z, y, confidence=confidence))
        x_adv = project(ascent_step(x_adv, grad, step_size, norm), x, eps, norm)
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    init: str = "uniform",
    confidence: float = 50.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Evaluation PGD-K: ``steps`` ascent steps of ``step_size`` (default eps/4, as GAIRAT /
    FAT's PGD-20) on ``loss`` ("ce" or "cw") from a ``init`` start ("uniform" in the ball, or
    "none").

    With ``restarts > 1`` each further restart runs only on the samples every earlier
    restart left correctly classified; a sample keeps the point of the restart that fooled
    it (worst case per sample), the survivors the last restart's point.
    """
    step_size = eps / 4 if step_size is None else step_size
    with eval_mode(model):
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        robust = torch.ones_like(y, dtype=torch.bool)
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv = _pgd_run(model, x[idx], y[idx], eps=eps, norm=norm, steps=steps, step_size=step_size, loss=loss,
                           init=init, confidence=confidence, generator=generator)
            x_adv[idx] = adv
            robust[idx[predict_labels(model, adv) != y[idx]]] = False
    return x_adv
