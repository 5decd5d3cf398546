"""Robustness evaluation: the attacks of the papers' tables, the driver, and sanity checks.

The columns of the FAT / GAIRAT result tables are attacks on a trained model:

============  ==========================================================================
label         attack (defaults follow the published evaluation code of FAT / GAIRAT)
============  ==========================================================================
Natural       no attack
FGSM          one step of size eps from a uniform random start (``rand_init=True``)
PGD-20        20 steps of size eps/4 on the cross-entropy, uniform random start
CW∞           30 steps of size eps/4 on the CW margin loss with confidence 50
PGD-100       100 steps, otherwise as PGD-20
AA            AutoAttack, standard version (:mod:`advc.runtime.autoattack`)
============  ==========================================================================

Every attack is assembled from the attack core, :mod:`advc.runtime.attacks`
(``random_start``, ``ascent_step``, ``project``, ``attack_loss``): the same PGD step the
compiled training objectives take, so evaluation and training cannot drift apart. Attacks
are batched and vectorised, run in the model's device and dtype with the model in eval mode,
and differentiate with respect to the input only (``torch.autograd.grad``), so parameter
``.grad`` stays untouched. Each attack function returns the adversarial batch ``x_adv``
(always inside B[x, eps] and the box [0, 1]); accuracies are computed from it.

The evaluation ε is the caller's (the spec's threat); an :class:`AttackConfig` may override
it. Accuracies are percentages (0-100), as in the papers.

:func:`sanity_checks` runs the standard tests against gradient masking (Carlini et al. 2019,
"On evaluating adversarial robustness"; the AutoAttack paper's discussion of flawed
evaluations): an attack
that seems to work only because gradients are useless shows up as a black-box attack
beating the white-box one, accuracy not falling as ε grows, or an unbounded attack failing.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from advc.errors import UserError
from advc.runtime import autoattack as aa
from advc.runtime.attacks import ascent_step, attack_loss, project, random_start

__all__ = [
    "ATTACK_NAMES",
    "AttackConfig",
    "Check",
    "adversarial_examples",
    "autoattack",
    "cw",
    "evaluate_model",
    "fgsm",
    "natural",
    "parse_attack_list",
    "pgd",
    "robust_accuracy",
    "robust_flags",
    "sanity_checks",
]


# --------------------------------------------------------------------------------------
# the attacks (each returns x_adv)
# --------------------------------------------------------------------------------------


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    loss: str,
    init: str,
    confidence: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """x^0 = random start; x^{t+1} = Π(x^t + α·step(∇ℓ)): DESIGN.md §3's PGD-K, evaluated
    like the published code at the final iterate (not the best one)."""
    x_adv = random_start(x, eps, norm, init, generator=generator)
    for _ in range(steps):
        _, _, grad = aa.loss_and_input_grad(
            model, x_adv, lambda z: attack_loss(loss, z, y, confidence=confidence)
        )
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
    """PGD-K: ``steps`` ascent steps of ``step_size`` (default eps/4, as GAIRAT / FAT's
    PGD-20) on ``loss`` ("ce" or "cw") from a ``init`` start ("uniform" in the ball, or
    "none").

    With ``restarts > 1`` each further restart runs only on the samples every earlier
    restart left correctly classified; a sample keeps the point of the restart that fooled
    it (worst case per sample), the survivors the last restart's point.
    """
    step_size = eps / 4 if step_size is None else step_size
    with aa.eval_mode(model):
        x, y = x.detach(), y.detach()
        x_adv = x.clone()
        robust = torch.ones_like(y, dtype=torch.bool)
        for _ in range(restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv = _pgd_run(
                model,
                x[idx],
                y[idx],
                eps=eps,
                norm=norm,
                steps=steps,
                step_size=step_size,
                loss=loss,
                init=init,
                confidence=confidence,
                generator=generator,
            )
            x_adv[idx] = adv
            robust[idx[aa.predict_labels(model, adv) != y[idx]]] = False
    return x_adv


def natural(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **_: Any) -> torch.Tensor:
    """No attack: x itself (the "Natural" column)."""
    return x.detach().clone()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    init: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FGSM as FAT / GAIRAT evaluate it: one CE step of size eps from a uniform random
    start (``rand_init=True``), projected back. ``init="none"`` is the classic FGSM of
    Goodfellow et al., optimal against a linear model."""
    return pgd(
        model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, init=init, generator=generator
    )


def cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 30,
    step_size: float | None = None,
    restarts: int = 1,
    confidence: float = 50.0,
    init: str = "uniform",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CW∞ of the FAT / GAIRAT tables: PGD on the CW margin loss
    ``attack_loss("cw", confidence=50)``, 30 steps of eps/4 from a uniform start."""
    return pgd(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        loss="cw",
        init=init,
        confidence=confidence,
        generator=generator,
    )


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """AutoAttack, standard version. ``options`` go to
    :func:`advc.runtime.autoattack.run_autoattack` (``steps``, ``n_targets``,
    ``square_queries``, ``rescale_schedule``, ``attacks``)."""
    return aa.autoattack(model, x, y, eps=eps, norm=norm, generator=generator, **options)


# --------------------------------------------------------------------------------------
# declarative attack descriptions
# --------------------------------------------------------------------------------------

#: Attack name -> (label, default steps, parameters allowed in ``AttackConfig.params``).
_ATTACKS: dict[str, tuple[str, int | None, frozenset[str]]] = {
    "natural": ("Natural", None, frozenset()),
    "fgsm": ("FGSM", 1, frozenset({"init"})),
    "pgd": ("PGD", 20, frozenset({"loss", "init", "confidence"})),
    "cw": ("CW∞", 30, frozenset({"init", "confidence"})),
    "autoattack": (
        "AA",
        100,
        frozenset({"version", "n_targets", "square_queries", "rescale_schedule", "attacks"}),
    ),
    "apgd-ce": ("APGD-CE", 100, frozenset()),
    "apgd-t": ("APGD-T", 100, frozenset({"n_targets"})),
    "fab-t": ("FAB-T", 100, frozenset({"n_targets"})),
    "square": ("Square", 5000, frozenset({"p_init", "rescale_schedule"})),
}
ATTACK_NAMES: tuple[str, ...] = tuple(_ATTACKS)


@dataclass(frozen=True)
class AttackConfig:
    """One evaluation attack, declaratively.

    ``steps``: iterations (PGD / CW / APGD / FAB; for ``square`` the number of queries);
    ``None`` takes the attack's published default. ``step_size``: ``None`` is eps/4 for
    PGD / CW (eps for FGSM). ``eps``: ``None`` uses the threat's ε passed to the driver.
    ``restarts``: random restarts (PGD / CW / APGD-CE). ``params``: attack-specific options
    (``confidence`` for CW, ``square_queries`` for AutoAttack, ...).
    """

    name: str
    steps: int | None = None
    step_size: float | None = None
    eps: float | None = None
    restarts: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The column name of the papers' tables: "Natural", "FGSM", "PGD-20", "CW∞",
        "PGD-100", "AA"; a non-default ε or restart count is added in parentheses so two
        different attacks never share a column."""
        base, default_steps, _ = _ATTACKS[self.name]
        steps = default_steps if self.steps is None else self.steps
        if self.name == "pgd":
            base = f"PGD-{steps}"
        elif self.name == "cw" and steps != default_steps:
            base = f"CW∞-{steps}"
        extras = []
        if self.eps is not None:
            extras.append(f"ε={self.eps:.4g}")
        if self.restarts != 1:
            extras.append(f"{self.restarts} restarts")
        return f"{base} ({', '.join(extras)})" if extras else base


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _bad_parameter(key: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for the attack parameter ``key`` (None if it is)."""
    if key == "init" and value not in ("uniform", "none", "normal"):
        return "must be 'uniform', 'none' or 'normal'"
    if key == "loss" and value not in ("ce", "cw"):
        return "must be 'ce' or 'cw'"
    if key == "version" and value != "standard":
        return "must be 'standard' (the only AutoAttack version implemented)"
    if key == "attacks" and (
        isinstance(value, str) or not all(a in aa.STANDARD_ATTACKS for a in value)
    ):
        return f"must be a list drawn from {', '.join(aa.STANDARD_ATTACKS)}"
    if key in ("n_targets", "square_queries") and not _is_int(value, 1):
        return "must be a whole number >= 1"
    if key == "confidence" and not (_is_number(value) and value >= 0):
        return "must be a number >= 0"
    if key == "p_init" and not (_is_number(value) and 0 < value <= 1):
        return "must be a number in (0, 1]"
    if key == "rescale_schedule" and not isinstance(value, bool):
        return "must be true or false"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_config(item: Any, position: int) -> AttackConfig:
    where = f"evaluation attack #{position + 1}"
    if isinstance(item, AttackConfig):
        item = {
            "name": item.name,
            "steps": item.steps,
            "step_size": item.step_size,
            "eps": item.eps,
            "restarts": item.restarts,
            "params": dict(item.params),
        }
    elif isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping):
        raise UserError(
            f"an evaluation attack must be a name or a mapping, got {item!r}", where=where
        )
    item = dict(item)
    name = item.pop("name", None)
    if not isinstance(name, str):
        raise UserError(
            "an evaluation attack needs a 'name'",
            where=where,
            hint=f"one of {', '.join(ATTACK_NAMES)}",
        )
    name = name.lower().replace("_", "-")
    if name not in _ATTACKS:
        raise UserError(
            f"unknown evaluation attack {name!r}",
            where=where,
            hint=_did_you_mean(name, ATTACK_NAMES) or f"one of {', '.join(ATTACK_NAMES)}",
        )
    if "queries" in item:  # the spec language's name for Square's query budget
        item["square_queries" if name == "autoattack" else "steps"] = item.pop("queries")
    params = dict(item.pop("params", None) or {})
    fields = {k: item.pop(k) for k in ("steps", "step_size", "eps", "restarts") if k in item}
    params.update(item)  # any other key is an attack-specific parameter
    allowed = _ATTACKS[name][2]
    for key in params:
        if key not in allowed:
            hint = _did_you_mean(key, allowed | {"steps", "step_size", "eps", "restarts"})
            raise UserError(
                f"attack {name!r} has no parameter {key!r}",
                where=where,
                hint=hint or (f"it accepts {', '.join(sorted(allowed))}" if allowed else None),
            )

    for key, value in params.items():
        problem = _bad_parameter(key, value)
        if problem:
            raise UserError(f"attack {name!r}: {key} {problem}, got {value!r}", where=where)

    def number(key: str, kind: type, minimum: float, *, allow_none: bool = True):
        value = fields.get(key)
        if value is None and allow_none:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or not math.isfinite(value) or value < minimum:
            raise UserError(
                f"attack {name!r}: {key} must be a {'whole ' if kind is int else ''}"
                f"number >= {minimum:g}, got {value!r}",
                where=where,
            )
        return kind(value)

    restarts = number("restarts", int, 1, allow_none=False) if "restarts" in fields else 1
    return AttackConfig(
        name=name,
        steps=number("steps", int, 1),
        step_size=number("step_size", float, 0.0),
        eps=number("eps", float, 0.0),
        restarts=restarts,
        params=params,
    )


def parse_attack_list(items: Iterable[Any]) -> list[AttackConfig]:
    """Build :class:`AttackConfig` objects from plain data: names (``"natural"``) or dicts
    (``{"name": "pgd", "steps": 20}``; keys other than name / steps / step_size / eps /
    restarts / params are attack parameters, e.g. ``{"name": "cw", "confidence": 50}``).

    Unknown attacks or parameters, bad numbers, and two attacks with the same column label
    raise :class:`advc.errors.UserError` with a "did you mean" hint where one exists.
    """
    configs = [_as_config(item, i) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        if cfg.label in seen:
            raise UserError(
                f"two evaluation attacks share the column {cfg.label!r}",
                where=f"evaluation attacks #{seen[cfg.label] + 1} and #{i + 1}",
            )
        seen[cfg.label] = i
    return configs


# --------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------


def _device_dtype(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Where and in what precision the model computes: its first floating parameter or
    buffer; a model without any takes the input's."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return x.device, x.dtype if x.is_floating_point() else torch.get_default_dtype()


def _attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig,
    *,
    eps: float,
    norm: str,
    generator: torch.Generator,
) -> torch.Tensor:
    eps = attack.eps if attack.eps is not None else eps
    p = dict(attack.params)
    name, steps = attack.name, attack.steps
    if name == "natural":
        return natural(model, x, y)
    if name == "fgsm":
        step = eps if attack.step_size is None else attack.step_size
        return pgd(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps or 1,
            step_size=step,
            init=p.get("init", "uniform"),
            generator=generator,
        )
    if name in ("pgd", "cw"):
        return pgd(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps if steps is not None else _ATTACKS[name][1],
            step_size=attack.step_size,
            restarts=attack.restarts,
            loss=p.get("loss", "cw" if name == "cw" else "ce"),
            init=p.get("init", "uniform"),
            confidence=float(p.get("confidence", 50.0)),
            generator=generator,
        )
    if name == "autoattack":
        options = {
            k: p[k]
            for k in ("version", "n_targets", "square_queries", "rescale_schedule")
            if k in p
        }
        if "attacks" in p:
            options["attacks"] = tuple(p["attacks"])
        return autoattack(
            model, x, y, eps=eps, norm=norm, steps=steps or 100, generator=generator, **options
        )
    if name == "apgd-ce":
        return aa.apgd(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps or 100,
            restarts=attack.restarts,
            generator=generator,
        )
    if name == "apgd-t":
        return aa.apgd_targeted(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            steps=steps or 100,
            n_targets=p.get("n_targets", 9),
            generator=generator,
        )
    if name == "fab-t":
        return aa.fab_targeted(
            model, x, y, eps=eps, norm=norm, steps=steps or 100, n_targets=p.get("n_targets", 9)
        )
    if name == "square":
        return aa.square(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            queries=steps or 5000,
            p_init=float(p.get("p_init", 0.8)),
            rescale_schedule=bool(p.get("rescale_schedule", False)),
            generator=generator,
        )
    raise ValueError(f"unknown attack {name!r}")  # pragma: no cover - parse_attack_list rejects it


def _percent(correct: torch.Tensor) -> float:
    """Accuracy in percent, counted in integers so that 72 of 100 prints as 72.0 exactly."""
    return 100.0 * int(correct.sum()) / correct.numel() if correct.numel() else 0.0


def _config(attack: AttackConfig | Mapping[str, Any] | str) -> AttackConfig:
    """Validate an attack however it was given (AttackConfig objects too)."""
    return parse_attack_list([attack])[0]


def robust_flags(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | Mapping[str, Any] | str,
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, correct): the attacked batch and, per sample, whether the model still
    classifies it correctly. Runs in batches of ``batch_size`` on the model's device and
    dtype; ``generator`` (on that device) drives the random starts, a fresh one seeded with
    ``seed`` by default so that every evaluation is reproducible."""
    attack = _config(attack)
    device, dtype = _device_dtype(model, x)
    x = x.detach().to(device=device, dtype=dtype)
    y = y.detach().to(device=device, dtype=torch.long)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    advs, correct = [], []
    with aa.eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            adv = _attack_batch(model, xb, yb, attack, eps=eps, norm=norm, generator=generator)
            advs.append(adv)
            correct.append(aa.predict_labels(model, adv) == yb)
    if not advs:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=device)
    return torch.cat(advs), torch.cat(correct)


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | Mapping[str, Any] | str,
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The adversarial batch of ``attack`` (see :func:`robust_flags`)."""
    return robust_flags(
        model, x, y, attack, eps=eps, norm=norm, batch_size=batch_size, generator=generator
    )[0]


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AttackConfig | Mapping[str, Any] | str,
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Accuracy in percent (0-100) of ``model`` on ``attack``'s adversarial examples."""
    _, correct = robust_flags(
        model, x, y, attack, eps=eps, norm=norm, batch_size=batch_size, generator=generator
    )
    return _percent(correct)


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[AttackConfig | Mapping[str, Any] | str],
    *,
    eps: float,
    norm: str = "linf",
    batch_size: int = 256,
    n: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """{label: accuracy in percent} for each attack, in the given order, on the first ``n``
    samples (all if ``None``). Each attack gets its own generator seeded with ``seed``, so
    a column does not depend on which attacks ran before it."""
    configs = parse_attack_list(attacks)
    if n is not None:
        x, y = x[:n], y[:n]
    results: dict[str, float] = {}
    for cfg in configs:
        _, correct = robust_flags(
            model, x, y, cfg, eps=eps, norm=norm, batch_size=batch_size, seed=seed
        )
        results[cfg.label] = _percent(correct)
    return results


# --------------------------------------------------------------------------------------
# sanity checks against gradient masking
# --------------------------------------------------------------------------------------


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


def sanity_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    results: Mapping[str, float],
    *,
    eps: float,
    norm: str = "linf",
    subset: int = 256,
    batch_size: int = 256,
    square_queries: int = 1000,
    black_box_margin: float = 5.0,
    tolerance: float = 0.5,
    seed: int = 0,
) -> list[Check]:
    """Tests for gradient masking, on ``results`` (from :func:`evaluate_model` on ``x``)
    and on cheap extra attacks run on the first ``subset`` samples:

    1. ``eps0-equals-natural``: PGD-20 at ε = 0 gives the natural accuracy (a stochastic or
       input-dependent-at-eval model breaks this).
    2. ``monotone-in-eps``: PGD-20 accuracy does not rise along ε ∈ {0, ε/4, ε/2, ε, 2ε}.
    3. ``more-steps-not-weaker``: PGD-K accuracy does not rise with K (e.g. PGD-100 <= PGD-20).
    4. ``autoattack-strongest``: AA is at most every other column.
    5. ``black-box-not-stronger``: the black-box Square attack is not more than
       ``black_box_margin`` points below white-box PGD-20; a score-based attack beating the
       gradient is the classic symptom of masked gradients (Carlini et al. 2019).
    6. ``unbounded-reaches-chance``: PGD-20 with ε covering the whole box (1 for L-inf, √d
       for L2) brings accuracy down to chance level (100 / classes) or below.

    Comparisons allow ``tolerance`` points or one sample, whichever is larger. Checks 3 and
    4 appear only when ``results`` has their columns; Square comes from ``results`` if
    present there together with PGD-20, else both are run on the subset.
    """
    checks: list[Check] = []
    device, dtype = _device_dtype(model, x)
    x = x.detach().to(device=device, dtype=dtype)
    y = y.detach().to(device=device, dtype=torch.long)
    xs, ys = x[:subset], y[:subset]
    m = max(xs.shape[0], 1)
    tol_full = max(tolerance, 100.0 / max(x.shape[0], 1))
    tol_sub = max(tolerance, 100.0 / m)

    def acc(attack: AttackConfig, *, at_eps: float) -> float:
        _, correct = robust_flags(
            model, xs, ys, attack, eps=at_eps, norm=norm, batch_size=batch_size, seed=seed
        )
        return _percent(correct)

    pgd20 = AttackConfig("pgd", steps=20)
    nat = acc(AttackConfig("natural"), at_eps=eps)

    # 1. eps = 0
    at_zero = acc(pgd20, at_eps=0.0)
    ok = abs(at_zero - nat) <= 1e-9
    checks.append(
        Check(
            "eps0-equals-natural",
            "pass" if ok else "warn",
            f"PGD-20 at ε=0: {_fmt(at_zero)}, natural: {_fmt(nat)} (first {xs.shape[0]} samples)"
            + (
                ""
                if ok
                else " -- the model is not deterministic in eval mode, or the attack moves at ε=0"
            ),
        )
    )

    # 2. eps sweep
    grid = [0.0, eps / 4, eps / 2, eps, 2 * eps]
    sweep = [at_zero] + [acc(pgd20, at_eps=e) for e in grid[1:]]
    rises = [
        (grid[i], grid[i + 1]) for i in range(len(grid) - 1) if sweep[i + 1] > sweep[i] + tol_sub
    ]
    curve = ", ".join(f"ε={e:.4g}: {_fmt(a)}" for e, a in zip(grid, sweep))
    checks.append(
        Check(
            "monotone-in-eps",
            "warn" if rises else "pass",
            f"PGD-20 accuracy {curve}"
            + (f" -- rises between ε={rises[0][0]:.4g} and ε={rises[0][1]:.4g}" if rises else ""),
        )
    )

    # 3. more PGD steps never help the model
    pgd_cols = sorted(
        (int(mt.group(1)), label) for label in results if (mt := re.fullmatch(r"PGD-(\d+)", label))
    )
    if len(pgd_cols) >= 2:
        bad = [
            (a, b)
            for a, b in itertools.pairwise(pgd_cols)
            if results[b[1]] > results[a[1]] + tol_full
        ]
        detail = ", ".join(f"{label}: {_fmt(results[label])}" for _, label in pgd_cols)
        if bad:
            detail += f" -- {bad[0][1][1]} is weaker than {bad[0][0][1]}"
        checks.append(Check("more-steps-not-weaker", "warn" if bad else "pass", detail))

    # 4. AutoAttack is the strongest column
    if "AA" in results:
        beaten = [k for k, v in results.items() if k != "AA" and results["AA"] > v + tol_full]
        checks.append(
            Check(
                "autoattack-strongest",
                "warn" if beaten else "pass",
                f"AA: {_fmt(results['AA'])}"
                + (
                    f" -- above {', '.join(f'{k} ({_fmt(results[k])})' for k in beaten)}"
                    if beaten
                    else f", at most every other column ({len(results) - 1})"
                ),
            )
        )

    # 5. black box vs white box
    if norm == "linf":
        if "Square" in results and "PGD-20" in results:
            sq, white, where, tol = results["Square"], results["PGD-20"], "all samples", tol_full
        else:
            sq = acc(AttackConfig("square", steps=square_queries), at_eps=eps)
            white, where, tol = (
                sweep[3],
                f"first {xs.shape[0]} samples, {square_queries} queries",
                tol_sub,
            )
        bad = sq < white - max(black_box_margin, tol)
        checks.append(
            Check(
                "black-box-not-stronger",
                "warn" if bad else "pass",
                f"Square (black-box): {_fmt(sq)}, PGD-20: {_fmt(white)} ({where})"
                + (
                    " -- a black-box attack beats the gradient: gradients are likely masked"
                    if bad
                    else ""
                ),
            )
        )

    # 6. an unbounded attack must win
    with torch.no_grad(), aa.eval_mode(model):
        n_classes = model(xs[:1]).shape[1] if xs.shape[0] else 1
    big = 1.0 if norm == "linf" else math.sqrt(xs[0].numel() if xs.shape[0] else 1)
    chance = 100.0 / n_classes
    at_big = acc(AttackConfig("pgd", steps=20), at_eps=big)
    bad = at_big > chance + tol_sub
    checks.append(
        Check(
            "unbounded-reaches-chance",
            "warn" if bad else "pass",
            f"PGD-20 at ε={big:.4g}: {_fmt(at_big)} (chance {_fmt(chance)})"
            + (" -- an attack allowed to change the whole input should not fail" if bad else ""),
        )
    )
    return checks
