"""The checked, resolved objective: plain values only, no syntax.

``check`` produces a ``Program``; ``lower``/``codegen`` turn it into Python. Every part keeps
an ``Origin`` -- the spec file, line and text it came from -- so generated code can say
which spec line each block implements.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Origin:
    file: str
    line: int
    text: str

    def comment(self) -> str:
        return f"{self.file}:{self.line}  {self.text.strip()}"


# --- schedules: any number may change with the (0-based) epoch ---------------------------


@dataclass(frozen=True)
class Const:
    value: float | int


@dataclass(frozen=True)
class Piecewise:
    """``points[i] = (epoch, value)``: value from that epoch on (first epoch 0)."""

    points: tuple[tuple[int, float | int], ...]


@dataclass(frozen=True)
class Linear:
    """Linear interpolation between the points; constant before the first and after the last."""

    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Cosine:
    """Cosine interpolation between consecutive points; constant outside them."""

    points: tuple[tuple[int, float], ...]


Sched = Const | Piecewise | Linear | Cosine


def sched_value(s: Sched, epoch: float) -> float | int:
    """The value of a schedule at an epoch (the same formula the generated code prints)."""
    import math

    if isinstance(s, Const):
        return s.value
    pts = s.points
    if isinstance(s, Piecewise):
        value = pts[0][1]
        for e, v in pts:
            if epoch >= e:
                value = v
        return value
    if epoch <= pts[0][0]:
        return pts[0][1]
    for (e0, v0), (e1, v1) in itertools.pairwise(pts):
        if epoch <= e1:
            t = (epoch - e0) / (e1 - e0)
            if isinstance(s, Cosine):
                t = (1 - math.cos(math.pi * t)) / 2
            return v0 + (v1 - v0) * t
    return pts[-1][1]


# --- expressions of the weight and the loss ----------------------------------------------


@dataclass(frozen=True)
class EConst:
    value: float | int


@dataclass(frozen=True)
class EVar:
    name: str  # a validated variable name (kappa, K, lambda, epoch, margin, loss, weight, a binding)


@dataclass(frozen=True)
class EFunc:
    fn: str  # a validated function name (tanh, sigmoid, exp, log, ...)
    args: tuple[E, ...]


@dataclass(frozen=True)
class ETerm:
    """A per-sample loss term of the outer objective: ce(adv), kl(nat, adv), bce(adv), prob(nat)."""

    kind: str
    args: tuple[str, ...]  # each 'nat' or 'adv'


@dataclass(frozen=True)
class EBin:
    op: str
    left: E
    right: E


@dataclass(frozen=True)
class ENeg:
    operand: E


E = EConst | EVar | EFunc | ETerm | EBin | ENeg


def walk(e: E):
    """Every node of an expression, the root first."""
    yield e
    if isinstance(e, EFunc):
        for a in e.args:
            yield from walk(a)
    elif isinstance(e, EBin):
        yield from walk(e.left)
        yield from walk(e.right)
    elif isinstance(e, ENeg):
        yield from walk(e.operand)


def variables(e: E) -> set[str]:
    """The names of the variables an expression reads."""
    return {n.name for n in walk(e) if isinstance(n, EVar)}


# --- the objective -----------------------------------------------------------------------


@dataclass(frozen=True)
class Threat:
    norm: str  # linf | l2
    eps: Sched
    origin: Origin


@dataclass(frozen=True)
class Attack:
    steps: int  # K
    step_size: Sched
    init: str  # none | uniform | normal
    init_scale: float
    loss: str  # ce | cw | kl
    noise: Sched  # FAT's `omega`: std of Gaussian noise added to every step
    confidence: float
    origin: Origin


@dataclass(frozen=True)
class Form:
    kind: str  # minmax | minmin
    tau: Sched
    rho: Sched
    origin: Origin | None


@dataclass(frozen=True)
class Weight:
    kind: str  # none | gair | expr
    fn: str | None
    lam: Sched
    from_epoch: int
    expr: E | None
    bindings: tuple[tuple[str, Sched], ...]
    needs: frozenset[str]  # per-sample quantities beyond kappa: {'margin', 'loss'}
    origin: Origin | None


@dataclass(frozen=True)
class Loss:
    expr: E
    bindings: tuple[tuple[str, Sched], ...]
    origin: Origin


@dataclass(frozen=True)
class Train:
    data: str
    data_args: tuple[tuple[str, object], ...]
    model: str
    model_args: tuple[tuple[str, object], ...]
    epochs: int
    batch: int
    seed: int
    optim: str
    lr: Sched
    optim_args: tuple[tuple[str, object], ...]
    precision: str
    val: int
    augment: bool
    sync_bn: bool
    channels_last: bool = False  # GPU path: NHWC memory format for model and inputs
    compile: bool = False  # GPU path: torch.compile through Accelerate's dynamo_backend
    origins: tuple[tuple[str, Origin], ...] = ()


@dataclass(frozen=True)
class EvalAttack:
    name: str
    params: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Program:
    name: str
    file: str
    chain: tuple[str, ...]  # the objective and its ancestors, nearest first
    spec_hash: str
    threat: Threat
    attack: Attack
    form: Form
    weight: Weight
    loss: Loss
    train: Train
    evaluate: tuple[EvalAttack, ...]
    overrides: tuple[tuple[str, str], ...] = field(default=())
