"""Sanity checks against gradient masking, run beside an evaluation.

The standard tests (Carlini et al. 2019, "On evaluating adversarial robustness"; the
AutoAttack paper's discussion of flawed evaluations): an attack that seems to work only
because gradients are useless shows up as a black-box attack beating the white-box one,
accuracy not falling as ε grows, more steps helping the model, or an unbounded attack failing.

:func:`sanity_checks` runs them on the results of :func:`advc.runtime.evaluate.evaluate_model`
and on cheap extra attacks over the first ``subset`` samples; each check is one function below.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from advc.runtime.attacks import eval_mode
from advc.runtime.evaluate import AttackConfig, _device_dtype, _percent, robust_flags

__all__ = ["Check", "sanity_checks"]


@dataclass(frozen=True)
class Check:
    """One sanity check's verdict: ``status`` is "pass" or "warn" (a warning is a reason to
    distrust the numbers, not an error: the evaluation still completed)."""

    name: str
    status: Literal["pass", "warn"]
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def _fmt(acc: float) -> str:
    return f"{acc:.2f}"


def _check(name: str, bad: bool, detail: str, why: str) -> Check:
    return Check(name, "warn" if bad else "pass", detail + (f" -- {why}" if bad else ""))


@dataclass
class _Context:
    """What every check needs: the model, the subset, the tolerances, one way to attack."""

    model: nn.Module
    xs: torch.Tensor
    ys: torch.Tensor
    results: Mapping[str, float]
    eps: float
    norm: str
    batch_size: int
    seed: int
    tol_full: float  # points of slack on the whole evaluation set
    tol_sub: float  # ... and on the subset

    def acc(self, attack: AttackConfig, at_eps: float) -> float:
        _, correct = robust_flags(self.model, self.xs, self.ys, attack, eps=at_eps, norm=self.norm,
                                  batch_size=self.batch_size, seed=self.seed)
        return _percent(correct)


PGD20 = AttackConfig("pgd", steps=20)


def eps0_equals_natural(c: _Context) -> tuple[Check, float]:
    """PGD-20 at ε = 0 gives the natural accuracy (a stochastic or input-dependent-at-eval model
    breaks this). Returns the check and the accuracy at ε = 0 (the sweep's first point)."""
    nat, at_zero = c.acc(AttackConfig("natural"), c.eps), c.acc(PGD20, 0.0)
    detail = f"PGD-20 at ε=0: {_fmt(at_zero)}, natural: {_fmt(nat)} (first {c.xs.shape[0]} samples)"
    return _check("eps0-equals-natural", abs(at_zero - nat) > 1e-9, detail,
                  "the model is not deterministic in eval mode, or the attack moves at ε=0"), at_zero


def monotone_in_eps(c: _Context, at_zero: float) -> tuple[Check, float]:
    """PGD-20 accuracy does not rise along ε ∈ {0, ε/4, ε/2, ε, 2ε}. Returns the check and
    the accuracy at ε on the subset."""
    grid = [0.0, c.eps / 4, c.eps / 2, c.eps, 2 * c.eps]
    sweep = [at_zero] + [c.acc(PGD20, e) for e in grid[1:]]
    rises = [(grid[i], grid[i + 1]) for i in range(len(grid) - 1) if sweep[i + 1] > sweep[i] + c.tol_sub]
    curve = ", ".join(f"ε={e:.4g}: {_fmt(a)}" for e, a in zip(grid, sweep, strict=True))
    why = f"rises between ε={rises[0][0]:.4g} and ε={rises[0][1]:.4g}" if rises else ""
    return _check("monotone-in-eps", bool(rises), f"PGD-20 accuracy {curve}", why), sweep[3]


def more_steps_not_weaker(c: _Context) -> Check | None:
    """PGD-K accuracy does not rise with K (e.g. PGD-100 <= PGD-20); needs two PGD columns."""
    cols = sorted((int(m.group(1)), label) for label in c.results if (m := re.fullmatch(r"PGD-(\d+)", label)))
    if len(cols) < 2:
        return None
    bad = [(a, b) for a, b in itertools.pairwise(cols) if c.results[b[1]] > c.results[a[1]] + c.tol_full]
    detail = ", ".join(f"{label}: {_fmt(c.results[label])}" for _, label in cols)
    why = f"{bad[0][1][1]} is weaker than {bad[0][0][1]}" if bad else ""
    return _check("more-steps-not-weaker", bool(bad), detail, why)


def autoattack_strongest(c: _Context) -> Check | None:
    """AutoAttack is at most every other column; needs the AA column."""
    if "AA" not in c.results:
        return None
    aa = c.results["AA"]
    beaten = [k for k, v in c.results.items() if k != "AA" and aa > v + c.tol_full]
    if beaten:
        return _check("autoattack-strongest", True, f"AA: {_fmt(aa)}",
                      f"above {', '.join(f'{k} ({_fmt(c.results[k])})' for k in beaten)}")
    return _check("autoattack-strongest", False, f"AA: {_fmt(aa)}, at most every other column "
                  f"({len(c.results) - 1})", "")


def black_box_not_stronger(c: _Context, white_subset: float, queries: int, margin: float) -> Check | None:
    """The black-box Square attack is not more than ``margin`` points below white-box PGD-20: a
    score-based attack beating the gradient is the classic symptom of masked gradients. L-inf only."""
    if c.norm != "linf":
        return None
    if "Square" in c.results and "PGD-20" in c.results:
        square, white, where, tol = c.results["Square"], c.results["PGD-20"], "all samples", c.tol_full
    else:
        square = c.acc(AttackConfig("square", steps=queries), c.eps)
        white, where, tol = white_subset, f"first {c.xs.shape[0]} samples, {queries} queries", c.tol_sub
    return _check("black-box-not-stronger", square < white - max(margin, tol),
                  f"Square (black-box): {_fmt(square)}, PGD-20: {_fmt(white)} ({where})",
                  "a black-box attack beats the gradient: gradients are likely masked")


def unbounded_reaches_chance(c: _Context) -> Check:
    """PGD-20 with ε covering the whole box (1 for L-inf, √d for L2) brings accuracy down to
    chance level (100 / classes) or below."""
    with torch.no_grad(), eval_mode(c.model):
        n_classes = c.model(c.xs[:1]).shape[1] if c.xs.shape[0] else 1
    big = 1.0 if c.norm == "linf" else math.sqrt(c.xs[0].numel() if c.xs.shape[0] else 1)
    chance, at_big = 100.0 / n_classes, c.acc(PGD20, big)
    return _check("unbounded-reaches-chance", at_big > chance + c.tol_sub,
                  f"PGD-20 at ε={big:.4g}: {_fmt(at_big)} (chance {_fmt(chance)})",
                  "an attack allowed to change the whole input should not fail")


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, results: Mapping[str, float], *,
                  eps: float, norm: str = "linf", subset: int = 256, batch_size: int = 256,
                  square_queries: int = 1000, black_box_margin: float = 5.0, tolerance: float = 0.5,
                  seed: int = 0) -> list[Check]:
    """The checks above on ``results`` (from ``evaluate_model`` on ``x``), in order.

    Comparisons allow ``tolerance`` points or one sample, whichever is larger. The checks of
    PGD columns and of AA appear only when ``results`` has those columns; Square comes from
    ``results`` if present there together with PGD-20, else both are run on the subset.
    """
    device, dtype = _device_dtype(model, x)
    x = x.detach().to(device=device, dtype=dtype)
    y = y.detach().to(device=device, dtype=torch.long)
    xs, ys = x[:subset], y[:subset]
    c = _Context(model, xs, ys, results, eps, norm, batch_size, seed,
                 tol_full=max(tolerance, 100.0 / max(x.shape[0], 1)), tol_sub=max(tolerance, 100.0 / max(len(xs), 1)))
    first, at_zero = eps0_equals_natural(c)
    sweep, white = monotone_in_eps(c, at_zero)
    found = [first, sweep, more_steps_not_weaker(c), autoattack_strongest(c),
             black_box_not_stronger(c, white, square_queries, black_box_margin), unbounded_reaches_chance(c)]
    return [check for check in found if check is not None]
