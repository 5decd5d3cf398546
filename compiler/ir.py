"""The checked, resolved objective: plain values only, no syntax.

``check`` produces a ``Program``; ``lower``/``codegen`` turn it into Python. Every part keeps
an ``Origin`` -- the spec file, line and text it came from -- so generated code can say
which spec line each block implements.

Numbers are **settings**: each one an expression (``X``) of constants, schedules, the epoch and
other settings (``step_size = eps / 4``), evaluated per epoch -- or, for a learning rate that
asks for it, per optimiser step. Weight, loss and stop expressions (``E``) are per-sample: they
read detached per-sample quantities (kappa, margin, ...), loss terms and scalar settings.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Origin:
    file: str
    line: int
    text: str

    def comment(self) -> str:
        return f"{self.file}:{self.line}  {self.text.strip()}"


# --- numbers: constants, schedules, the epoch, other settings -----------------------------


@dataclass(frozen=True)
class XConst:
    value: float | int


@dataclass(frozen=True)
class XRef:
    """Another setting, by key (``attack.steps``); ``name`` is how the spec wrote it."""

    key: str
    name: str


@dataclass(frozen=True)
class XVar:
    name: str  # epoch | progress


@dataclass(frozen=True)
class XSched:
    """``piecewise|linear|cosine(epoch: value, ...)`` -- or a per-step ``onecycle``/``cyclic``.

    ``points``: (epoch, value), epochs increasing. ``every``: "epoch", or "step" when the value
    changes at every optimiser step (evaluated at the fractional epoch of the step).
    ``options``: the named parameters of onecycle/cyclic.
    """

    kind: str
    points: tuple[tuple[int, float | int], ...] = ()
    every: str = "epoch"
    options: tuple[tuple[str, float | str], ...] = ()


@dataclass(frozen=True)
class XBin:
    op: str  # + - * / ^
    left: X
    right: X


@dataclass(frozen=True)
class XNeg:
    operand: X


@dataclass(frozen=True)
class XFunc:
    fn: str
    args: tuple[X, ...]


X = XConst | XRef | XVar | XSched | XBin | XNeg | XFunc


def xwalk(x: X):
    """Every node of a number expression, the root first."""
    yield x
    if isinstance(x, XBin):
        yield from xwalk(x.left)
        yield from xwalk(x.right)
    elif isinstance(x, XNeg):
        yield from xwalk(x.operand)
    elif isinstance(x, XFunc):
        for a in x.args:
            yield from xwalk(a)


@dataclass(frozen=True)
class Setting:
    """One number of the spec: ``key`` (``attack.step_size``), ``name`` (``step_size``), its value.

    ``const`` is the value when it is the same at every epoch (references and arithmetic folded
    away), else ``None``. ``per_step`` marks a learning rate that changes at every step.
    ``text`` is the value as the spec wrote it (canonical form), for records and messages.
    """

    key: str
    name: str
    value: X
    integer: bool = False
    origin: Origin | None = None
    const: float | int | None = None
    per_step: bool = False
    text: str = ""
    lo: float | None = None  # its smallest and largest value over the run (per-step: its schedule's)
    hi: float | None = None


# --- the schedules' formulas (the same the generated code prints) ------------------------


def sched_at(s: XSched, epoch: float) -> float | int:
    """The value of an epoch schedule at a (possibly fractional) epoch."""
    pts = s.points
    if s.kind == "piecewise":
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
            if s.kind == "cosine":
                t = (1 - math.cos(math.pi * t)) / 2
            return v0 + (v1 - v0) * t
    return pts[-1][1]


def onecycle_at(step: int, total: int, max_lr: float, pct_start: float, div: float, final_div: float,
                anneal: str) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's learning rate at ``step`` of ``total`` (two phases)."""
    initial, minimum = max_lr / div, max_lr / div / final_div
    end_up = float(pct_start * total) - 1
    end_down = float(total - 1)
    if step <= end_up:
        start, stop, pct = initial, max_lr, step / end_up if end_up > 0 else 1.0
    else:
        start, stop, pct = max_lr, minimum, (step - end_up) / (end_down - end_up)
    if anneal == "cos":
        return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (stop - start) * pct + start


def cyclic_at(step: int, total: int, lo: float, hi: float, cycles: int) -> float:
    """torch.optim.lr_scheduler.CyclicLR's triangular rate at ``step``: ``cycles`` cycles in ``total``
    steps, each half up and half down (fast AT's ``step_size_up = step_size_down = steps / 2``)."""
    up = down = total / (2 * cycles)
    size = up + down
    ratio = up / size
    cycle = math.floor(1 + step / size)
    x = 1.0 + step / size - cycle
    scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    return lo + (hi - lo) * scale


# --- per-sample expressions of weights, losses and stop rules ----------------------------


@dataclass(frozen=True)
class EConst:
    value: float | int


@dataclass(frozen=True)
class EVar:
    """A scalar: a setting or binding (by name), ``K``, ``epoch``, ``progress``, or ``weight``."""

    name: str


@dataclass(frozen=True)
class EQty:
    """A detached per-sample quantity: kappa, steps, margin, loss, prob(adv), pm, fosc, ..."""

    name: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ETerm:
    """A differentiable per-sample loss term of the outer objective: ce(adv), kl(nat, adv), ..."""

    kind: str
    args: tuple[str, ...]  # each 'nat' or 'adv'


@dataclass(frozen=True)
class EFunc:
    fn: str
    args: tuple[E, ...]


@dataclass(frozen=True)
class EBin:
    op: str
    left: E
    right: E


@dataclass(frozen=True)
class ENeg:
    operand: E


@dataclass(frozen=True)
class ECmp:
    op: str  # < <= > >= == !=
    left: E
    right: E


@dataclass(frozen=True)
class EBool:
    op: str  # and | or
    left: E
    right: E


@dataclass(frozen=True)
class ENot:
    operand: E


E = EConst | EVar | EQty | ETerm | EFunc | EBin | ENeg | ECmp | EBool | ENot


def walk(e: E):
    """Every node of an expression, the root first."""
    yield e
    if isinstance(e, EFunc):
        for a in e.args:
            yield from walk(a)
    elif isinstance(e, (EBin, ECmp, EBool)):
        yield from walk(e.left)
        yield from walk(e.right)
    elif isinstance(e, (ENeg, ENot)):
        yield from walk(e.operand)


def variables(e: E) -> set[str]:
    """The names of the scalars an expression reads."""
    return {n.name for n in walk(e) if isinstance(n, EVar)}


def quantities(e: E) -> set[tuple[str, tuple[str, ...]]]:
    """The per-sample quantities an expression reads, as (name, args)."""
    return {(n.name, n.args) for n in walk(e) if isinstance(n, EQty)}


# --- the objective -----------------------------------------------------------------------


@dataclass(frozen=True)
class Threat:
    norm: str  # linf | l2
    eps: Setting
    origin: Origin


@dataclass(frozen=True)
class Attack:
    steps: Setting  # K (whole numbers)
    step_size: Setting
    init: str  # none | uniform | normal
    init_scale: float
    loss: str  # ce | cw | kl
    noise: Setting  # FAT's `omega`: std of Gaussian noise added to every step
    confidence: float
    mode: str  # eval | train: the model's mode during the attack
    origin: Origin


@dataclass(frozen=True)
class Form:
    kind: str  # minmax | minmin | free
    tau: Setting | None
    rho: Setting | None
    stop: E | None  # per-sample stop rule; None: misclassified by rho
    stop_text: str
    bindings: tuple[Setting, ...]
    origin: Origin | None
    replay: int | None = None  # free: times each minibatch is replayed


@dataclass(frozen=True)
class Perturb:
    """AWP: the weights move by gamma * ||w_l|| per layer toward higher loss before each update."""

    gamma: float
    steps: int
    lr: float
    from_epoch: int
    origin: Origin | None


@dataclass(frozen=True)
class Guard:
    """Stop training when PGD accuracy on the epoch's first training batch collapses (fast AT)."""

    steps: int
    step_size: float
    drop: float
    origin: Origin | None


@dataclass(frozen=True)
class Weight:
    kind: str  # none | gair | expr
    fn: str | None
    lam: Setting | None
    from_epoch: int
    normalise: str  # mean | sum | none
    expr: E | None
    bindings: tuple[Setting, ...]
    origin: Origin | None
    text: str = ""  # the weight as written, for messages
    sign: str = "positive"  # what the checker proved: positive | nonnegative | unknown


@dataclass(frozen=True)
class Loss:
    expr: E
    bindings: tuple[Setting, ...]
    origin: Origin


@dataclass(frozen=True)
class Train:
    data: str
    data_args: tuple[tuple[str, object], ...]
    model: str  # a built-in model, or "package.module:callable" (user code)
    model_args: tuple[tuple[str, object], ...]
    epochs: int
    batch: int
    seed: int
    optim: str
    lr: Setting
    optim_args: tuple[tuple[str, object], ...]  # a value, or a Setting when it follows the epoch/step
    precision: str
    val: float | int
    augment: bool
    sync_bn: bool
    channels_last: bool = False  # GPU path: NHWC memory format for model and inputs
    compile: bool = False  # GPU path: torch.compile through Accelerate's dynamo_backend
    origins: tuple[tuple[str, Origin], ...] = ()
    guard: Guard | None = None

    @property
    def user_model(self) -> bool:
        """The model is user code (``package.module:callable``): it runs only when trusted."""
        return ":" in self.model


@dataclass(frozen=True)
class EvalAttack:
    name: str
    params: tuple[tuple[str, object], ...]  # every parameter, defaults filled in
    label: str = ""


@dataclass(frozen=True)
class Warning:
    """A setting that never takes effect, or one that probably does not mean what it says."""

    code: str  # its name, to silence it: --allow CODE
    message: str
    rendered: str  # file:line:col: warning[code]: message, the line and a caret


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
    train: Train | None  # None: an objective for a loop the user brings (advc.load / compile)
    evaluate: tuple[EvalAttack, ...]
    perturb: Perturb | None = None
    overrides: tuple[tuple[str, str], ...] = field(default=())
    files: tuple[tuple[str, str], ...] = ()  # every spec file read (path, where it came from), root first
    texts: tuple[tuple[str, str], ...] = ()  # (path, text) of those files: the run folder records them
    parents: tuple[tuple[str, str, str], ...] = ()  # (objective, file, how it was found), nearest first
    settings: tuple[Setting, ...] = ()  # every number, in source order
    warnings: tuple[Warning, ...] = ()

    def setting(self, key: str) -> Setting:
        for s in self.settings:
            if s.key == key:
                return s
        raise KeyError(key)
