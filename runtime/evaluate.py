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

The sanity checks against gradient masking are :mod:`advc.runtime.sanity`.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from advc.compiler.vocabulary.evaluation import ATTACKS as VOCABULARY
from advc.compiler.vocabulary.evaluation import label as vocabulary_label
from advc.errors import UserError
from advc.runtime import autoattack as aa
from advc.runtime.attacks import eval_mode, pgd, predict_labels

__all__ = [
    "ATTACK_NAMES",
    "AttackConfig",
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
]


# --------------------------------------------------------------------------------------
# the attacks: one runner per entry of advc.compiler.vocabulary.evaluation (each returns x_adv)
# --------------------------------------------------------------------------------------


def natural(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **_: Any) -> torch.Tensor:
    """No attack: x itself (the "Natural" column)."""
    return x.detach().clone()


def fgsm(model, x, y, *, eps: float, norm: str = "linf", init: str = "uniform", generator=None, **_: Any):
    """FGSM as FAT / GAIRAT evaluate it: one CE step of size eps from a uniform random
    start (``rand_init=True``), projected back. ``init="none"`` is the classic FGSM of
    Goodfellow et al., optimal against a linear model."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=1, step_size=eps, init=init, generator=generator)


def pgd_attack(model, x, y, *, eps, norm="linf", steps=20, step_size=None, restarts=1, loss="ce", init="uniform",
               generator=None, **_: Any):
    """PGD-K on the cross-entropy (or the CW loss), step eps/4, uniform random start."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts, loss=loss,
               init=init, generator=generator)


def cw(model, x, y, *, eps, norm="linf", steps=30, step_size=None, restarts=1, confidence=50.0, init="uniform",
       generator=None, **_: Any):
    """CW∞ of the FAT / GAIRAT tables: PGD on the CW margin loss
    ``attack_loss("cw", confidence=50)``, 30 steps of eps/4 from a uniform start."""
    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts, loss="cw",
               init=init, confidence=float(confidence), generator=generator)


def autoattack(model, x, y, *, eps, norm="linf", generator=None, queries=5000, n_targets=9, **options: Any):
    """AutoAttack, standard version (``options``: the Python API's tuning knobs ``version``,
    ``attacks``, ``rescale_schedule``, ``square_queries`` -- see :mod:`advc.runtime.autoattack`)."""
    options.setdefault("square_queries", queries)
    if "attacks" in options:
        options["attacks"] = tuple(options["attacks"])
    return aa.autoattack(model, x, y, eps=eps, norm=norm, generator=generator, n_targets=n_targets,
                         **{k: v for k, v in options.items() if k in _AUTOATTACK_KNOBS})


def square(model, x, y, *, eps, norm="linf", queries=5000, p_init=0.8, rescale_schedule=False, generator=None,
           **_: Any):
    """The black-box Square attack."""
    return aa.square(model, x, y, eps=eps, norm=norm, queries=queries, p_init=float(p_init),
                     rescale_schedule=bool(rescale_schedule), generator=generator)


def apgd_ce(model, x, y, *, eps, norm="linf", steps=100, restarts=1, generator=None, **_: Any):
    return aa.apgd(model, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, generator=generator)


def apgd_t(model, x, y, *, eps, norm="linf", steps=100, n_targets=9, generator=None, **_: Any):
    return aa.apgd_targeted(model, x, y, eps=eps, norm=norm, steps=steps, n_targets=n_targets, generator=generator)


def fab_t(model, x, y, *, eps, norm="linf", steps=100, n_targets=9, **_: Any):
    return aa.fab_targeted(model, x, y, eps=eps, norm=norm, steps=steps, n_targets=n_targets)


_RUNNERS = {"natural": natural, "fgsm": fgsm, "pgd": pgd_attack, "cw": cw, "autoattack": autoattack,
            "square": square, "apgd_ce": apgd_ce, "apgd_t": apgd_t, "fab_t": fab_t}  # fmt: skip
# tuning knobs of the Python API beyond the language's parameters (advc.compiler.vocabulary.evaluation)
_AUTOATTACK_KNOBS = {"version", "attacks", "rescale_schedule", "square_queries"}
_KNOBS = {"autoattack": _AUTOATTACK_KNOBS, "square": {"rescale_schedule"}, "pgd": {"confidence"}}

# --------------------------------------------------------------------------------------
# declarative attack descriptions (names, parameters, defaults and labels: the vocabulary's)
# --------------------------------------------------------------------------------------

ATTACK_NAMES: tuple[str, ...] = tuple(VOCABULARY)
assert set(_RUNNERS) == set(VOCABULARY), "every evaluation attack of the vocabulary has a runner"


@dataclass(frozen=True)
class AttackConfig:
    """One evaluation attack, declaratively (the runtime's form of an ``evaluate`` entry).

    ``steps``: iterations (PGD / CW / APGD / FAB; for ``square`` the number of queries);
    ``None`` takes the attack's published default. ``step_size``: ``None`` is eps/4 for
    PGD / CW (eps for FGSM). ``eps``: ``None`` uses the threat's ε passed to the driver.
    ``restarts``: random restarts (PGD / CW / APGD-CE). ``params``: the attack's other
    parameters (``confidence`` for CW, ``queries`` for AutoAttack, ...).
    """

    name: str
    steps: int | None = None
    step_size: float | None = None
    eps: float | None = None
    restarts: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)

    def full_params(self) -> dict[str, Any]:
        """Every parameter of the vocabulary entry, defaults filled in."""
        entry = VOCABULARY[_name(self.name)]
        out = {k: p.default for k, p in entry.params.items()}
        fields = {"steps": self.steps, "step_size": self.step_size, "eps": self.eps, "restarts": self.restarts}
        for k, v in fields.items():
            if k in entry.params and (v is not None or k not in out):
                out[k] = v
        if _name(self.name) == "square" and self.steps is not None:
            out["queries"] = self.steps
        out.update({k: v for k, v in self.params.items() if k in entry.params})
        return out

    @property
    def label(self) -> str:
        """The column name of the papers' tables: "Natural", "FGSM", "PGD-20", "CW∞",
        "PGD-100", "AA"; a non-default ε or restart count is added in parentheses so two
        different attacks never share a column."""
        return vocabulary_label(_name(self.name), self.full_params())

    @classmethod
    def from_ir(cls, attack) -> AttackConfig:
        """The runtime form of a checked ``ir.EvalAttack``."""
        p = dict(attack.params)
        fields = {k: p.pop(k) for k in ("steps", "step_size", "eps") if k in p}
        restarts = p.pop("restarts", 1) or 1
        return cls(attack.name, restarts=restarts, params={k: v for k, v in p.items() if v is not None}, **fields)


def _name(name: str) -> str:
    return name.lower().replace("-", "_")


def _as_config(item: Any, position: int) -> AttackConfig:
    where = f"evaluation attack #{position + 1}"
    if isinstance(item, AttackConfig):
        item = {"name": item.name, "steps": item.steps, "step_size": item.step_size, "eps": item.eps,
                "restarts": item.restarts, "params": dict(item.params)}
    elif isinstance(item, str):
        item = {"name": item}
    elif hasattr(item, "params") and hasattr(item, "name"):  # a checked ir.EvalAttack
        return AttackConfig.from_ir(item)
    if not isinstance(item, Mapping):
        raise UserError(f"an evaluation attack must be a name or a mapping, got {item!r}", where=where)
    item = dict(item)
    name = item.pop("name", None)
    if not isinstance(name, str):
        raise UserError("an evaluation attack needs a 'name'", where=where, hint=f"one of {', '.join(ATTACK_NAMES)}")
    name = _name(name)
    if name not in VOCABULARY:
        raise UserError(f"unknown evaluation attack {name!r}", where=where,
                        hint=_did_you_mean(name, ATTACK_NAMES) or f"one of {', '.join(ATTACK_NAMES)}")
    params = dict(item.pop("params", None) or {})
    fields = {k: item.pop(k) for k in ("steps", "step_size", "eps", "restarts") if k in item}
    params.update(item)  # any other key is an attack parameter
    table = VOCABULARY[name].params
    allowed = set(table) | _KNOBS.get(name, set())
    for key, value in params.items():
        if key not in allowed:
            hint = _did_you_mean(key, allowed | {"steps", "step_size", "eps", "restarts"})
            raise UserError(f"attack {name!r} has no parameter {key!r}", where=where,
                            hint=hint or (f"it accepts {', '.join(sorted(allowed))}" if allowed else None))
        problem = _bad_parameter(key, value, table.get(key))
        if problem:
            raise UserError(f"attack {name!r}: {key} {problem}, got {value!r}", where=where)

    def number(key: str, kind: type, minimum: float):
        value = fields.get(key)
        if value is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or not math.isfinite(value) or value < minimum:
            raise UserError(f"attack {name!r}: {key} must be a {'whole ' if kind is int else ''}number >= {minimum:g}, "
                            f"got {value!r}", where=where)
        return kind(value)

    restarts = number("restarts", int, 1)
    return AttackConfig(name=name, steps=number("steps", int, 1), step_size=number("step_size", float, 0.0),
                        eps=number("eps", float, 0.0), restarts=1 if restarts is None else restarts, params=params)


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def _bad_parameter(key: str, value: Any, param) -> str | None:
    """Why ``value`` is not acceptable for the attack parameter ``key`` (None if it is)."""
    if param is not None:
        if param.kind == "choice" and value not in param.choices:
            return "must be " + ", ".join(repr(c) for c in param.choices[:-1]) + f" or {param.choices[-1]!r}"
        if param.kind in ("int", "num"):
            whole = param.kind == "int"
            if not _is_number(value) or (whole and not float(value).is_integer()) or param.violated(value):
                return f"must be a {'whole ' if whole else ''}number {param.range_text()}"
        return None
    if key == "version" and value != "standard":
        return "must be 'standard' (the only AutoAttack version implemented)"
    if key == "attacks" and (isinstance(value, str) or not all(a in aa.STANDARD_ATTACKS for a in value)):
        return f"must be a list drawn from {', '.join(aa.STANDARD_ATTACKS)}"
    if key == "square_queries" and not (_is_number(value) and float(value).is_integer() and value >= 1):
        return "must be a whole number >= 1"
    if key in ("rescale_schedule",) and not isinstance(value, bool):
        return "must be true or false"
    if key == "confidence" and not (_is_number(value) and value >= 0):
        return "must be a number >= 0"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_attack_list(items: Iterable[Any]) -> list[AttackConfig]:
    """Build :class:`AttackConfig` objects from plain data: names (``"natural"``), dicts
    (``{"name": "pgd", "steps": 20}``; keys other than name / steps / step_size / eps /
    restarts / params are attack parameters) or checked ``ir.EvalAttack`` entries.

    Unknown attacks or parameters, bad numbers, and two attacks with the same column label
    raise :class:`advc.errors.UserError` with a "did you mean" hint where one exists.
    """
    configs = [_as_config(item, i) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        if cfg.label in seen:
            raise UserError(f"two evaluation attacks share the column {cfg.label!r}",
                            where=f"evaluation attacks #{seen[cfg.label] + 1} and #{i + 1}")
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


def _attack_batch(model, x, y, attack: AttackConfig, *, eps: float, norm: str, generator) -> torch.Tensor:
    params = attack.full_params()
    params.update({k: v for k, v in attack.params.items() if k not in params})  # the API's tuning knobs
    params = {k: v for k, v in params.items() if v is not None}
    params["eps"] = attack.eps if attack.eps is not None else eps
    if _name(attack.name) == "fgsm" and attack.steps is not None:  # FGSM with more steps: a short PGD of step eps
        return pgd(model, x, y, eps=params["eps"], norm=norm, steps=attack.steps,
                   step_size=attack.step_size or params["eps"], init=params.get("init", "uniform"), generator=generator)
    return _RUNNERS[_name(attack.name)](model, x, y, norm=norm, generator=generator, **params)


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
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            adv = _attack_batch(model, xb, yb, attack, eps=eps, norm=norm, generator=generator)
            advs.append(adv)
            correct.append(predict_labels(model, adv) == yb)
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
