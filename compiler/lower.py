"""Stage 3: ``ir.Program`` -> the values and Python fragments the templates lay out.

Everything a template prints comes from here: numbers through ``literal`` of checked values,
names from fixed tables, expressions from the IR walked node by node. No text of the spec is
ever pasted into code (spec lines appear only inside comments, sanitised), so a spec cannot
inject code into the module it compiles to.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .vocabulary.clauses import MIXED_PRECISION, OPTIMIZER_CLASSES
from .vocabulary.datasets import DATASETS
from .vocabulary.models import MODELS
from .vocabulary.quantities import TERMS

TEMPLATES = Path(__file__).parent / "templates"
# local names lower.py itself writes into generated functions (reserved for where-bindings too)
LOCALS = {"t", "i", "total", "cycle", "up", "ratio", "scale", "pct", "start", "stop", "x"}

_SCALAR_FN = {
    "tanh": "math.tanh({0})", "exp": "math.exp({0})", "log": "math.log({0})", "sqrt": "math.sqrt({0})",
    "abs": "abs({0})", "floor": "math.floor({0})", "sigmoid": "1 / (1 + math.exp(-({0})))",
    "min": "min({0}, {1})", "max": "max({0}, {1})", "clamp": "min(max({0}, {1}), {2})",
}  # fmt: skip
_TENSOR_FN = {
    "tanh": "torch.tanh({0})", "exp": "torch.exp({0})", "log": "torch.log({0})", "sqrt": "torch.sqrt({0})",
    "abs": "torch.abs({0})", "floor": "torch.floor({0})", "sigmoid": "torch.sigmoid({0})",
}  # fmt: skip
_PREC = {"or": -2, "and": -1, "cmp": 0, "+": 1, "-": 1, "*": 2, "/": 2, "^": 4}


def literal(value) -> str:
    """A Python literal for a checked value (numbers, strings, bools, tuples of those)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "math.inf" if value > 0 else "-math.inf"
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, str):
        # double quotes as ruff formats them; repr() for anything unusual (always a valid literal)
        if all(ch.isprintable() for ch in value) and '"' not in value and "\\" not in value:
            return f'"{value}"'
        return repr(value)
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(f"cannot emit {type(value).__name__} as a literal")  # pragma: no cover


def comment(origin: ir.Origin | None) -> str:
    """``# specs/fat.adv:7  form minmin(...)``: where a block came from, safe inside a comment."""
    if origin is None:
        return "# (default: not written in the spec)"
    text = " ".join(origin.comment().split())  # one line, whatever the spec held
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return "# " + text


def safe(text: str) -> str:
    """Spec text for a comment or a string: one line, printable."""
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))


# --- settings --------------------------------------------------------------------------------


@dataclass
class Emitted:
    """A setting as generated code holds it: a constant ``NAME`` or a function ``name_at``."""

    setting: ir.Setting
    py: str  # python stem: EPS / eps_at
    integer: bool
    doc: str = ""
    body: list[str] = field(default_factory=list)  # statements of name_at (empty for a constant)
    signature: str = "epoch: int"

    @property
    def constant(self) -> bool:
        return self.setting.const is not None

    @property
    def const_name(self) -> str:
        return self.py.upper()

    def const_literal(self) -> str:
        v = self.setting.const
        return literal(int(v) if self.integer else float(v) if not isinstance(v, float) else v)

    def call(self, epoch: str = "epoch") -> str:
        if self.constant:
            return self.const_name
        if self.setting.per_step:
            return f"{self.py}_at(epoch, step, steps_per_epoch)"
        return f"{self.py}_at({epoch})"


def _py_name(setting: ir.Setting, taken: set[str]) -> str:
    name = {"weight.lambda": "lam"}.get(setting.key, setting.name)
    if name.upper() in taken or name in taken:  # a binding named like a setting: qualify it
        name = f"{setting.key.split('.')[0]}_{name}"
    taken |= {name, name.upper()}
    return name


class Numbers:
    """Python for number expressions (``ir.X``), given how each setting is emitted."""

    def __init__(self, emitted: dict[str, Emitted], epochs: int | None):
        self.emitted, self.epochs = emitted, epochs

    def code(self, x: ir.X, epoch: str = "epoch") -> tuple[str, int]:
        """(code, precedence) of a number expression inside a function of ``epoch``."""
        if isinstance(x, ir.XConst):
            return literal(x.value), 5
        if isinstance(x, ir.XRef):
            return self.emitted[x.key].call(epoch), 5
        if isinstance(x, ir.XVar):
            return (epoch, 5) if x.name == "epoch" else (f"{epoch} / EPOCHS", 2)
        if isinstance(x, ir.XNeg):
            inner, p = self.code(x.operand, epoch)
            return (f"-({inner})" if p < 3 else f"-{inner}"), 3
        if isinstance(x, ir.XBin):
            p = _PREC[x.op]
            (lc, lp), (rc, rp) = self.code(x.left, epoch), self.code(x.right, epoch)
            lc = f"({lc})" if lp < p or (x.op == "^" and lp <= p) else lc
            rc = f"({rc})" if (rp <= p and x.op != "^") or rp < p else rc
            return f"{lc} {'**' if x.op == '^' else x.op} {rc}", p
        if isinstance(x, ir.XFunc):
            return _SCALAR_FN[x.fn].format(*(self.code(a, epoch)[0] for a in x.args)), 5
        raise TypeError(f"a schedule inside an expression is hoisted first: {x!r}")  # pragma: no cover


def _sched_body(s: ir.XSched, integer: bool, t: str = "epoch") -> list[str]:
    """Statements computing an epoch schedule at ``t`` (the formulas of ``ir.sched_at``)."""
    num = (lambda v: literal(int(v))) if integer else (lambda v: literal(float(v)))
    if s.kind == "piecewise":
        lines = []
        for e, v in reversed(s.points[1:]):
            lines += [f"if {t} >= {e}:", f"    return {num(v)}"]
        return lines + [f"return {num(s.points[0][1])}"]
    pts = s.points
    lines = [f"if {t} <= {pts[0][0]}:", f"    return {num(pts[0][1])}"]
    for (e0, v0), (e1, v1) in itertools.pairwise(pts):
        frac = f"({t} - {e0}) / {e1 - e0}"
        if s.kind == "cosine":
            frac = f"(1 - math.cos(math.pi * {frac})) / 2"
        lines += [f"if {t} <= {e1}:", f"    t = {frac}", f"    return {num(v0)} + ({num(v1)} - {num(v0)}) * t"]
    return lines + [f"return {num(pts[-1][1])}"]


def _step_body(s: ir.XSched) -> tuple[list[str], str]:
    """Statements of a per-step schedule of ``(epoch, step, steps_per_epoch)``, and its doc."""
    o = dict(s.options)
    head = ["i = epoch * steps_per_epoch + step  # the optimiser step, from 0", "total = EPOCHS * steps_per_epoch"]
    if s.kind == "onecycle":
        mx, div, final = float(o["max"]), float(o["div"]), float(o["final_div"])
        anneal = ("stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)" if o["anneal"] == "cos"
                  else "(stop - start) * pct + start")
        return head + [
            f"up = float({literal(float(o['pct_start']))} * total) - 1  # the last step of the rise",
            "if i <= up:",
            # up is 0 when pct_start * total is 1: the rise is the first step alone (torch divides by 0)
            f"    start, stop, pct = {literal(mx / div)}, {literal(mx)}, i / up if up > 0 else 1.0",
            "else:",
            f"    start, stop, pct = {literal(mx)}, {literal(mx / div / final)}, (i - up) / (total - 1 - up)",
            f"return {anneal}",
        ], "one-cycle schedule per step, as torch.optim.lr_scheduler.OneCycleLR"
    if s.kind == "cyclic":
        cycles = int(o["cycles"])
        return head + [
            f"up = total / {2 * cycles}  # steps up = steps down",
            "size = up + up",
            "ratio = up / size",
            "cycle = math.floor(1 + i / size)",
            "x = 1.0 + i / size - cycle",
            "scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)",
            f"return {literal(float(o['min']))} + ({literal(float(o['max']))} - {literal(float(o['min']))}) * scale",
        ], "triangular cyclic schedule per step, as torch.optim.lr_scheduler.CyclicLR"
    body = ["t = epoch + step / steps_per_epoch  # the fractional epoch of this step", *_sched_body(s, False, "t")]
    return body, f"{s.kind} schedule over fractional epochs, applied at every step"


# --- per-sample expressions -------------------------------------------------------------------


@dataclass
class Code:
    code: str
    tensor: bool
    prec: int = 5


class Expressions:
    """Python for per-sample expressions: ``names`` maps scalars, ``quantities`` the per-sample ones."""

    def __init__(self, names: dict[str, str], quantities: dict[tuple[str, tuple], str]):
        self.names, self.quantities = names, quantities

    def emit(self, e: ir.E) -> Code:
        if isinstance(e, ir.EConst):
            v = e.value
            return Code(literal(float(v) if isinstance(v, float) else v), False)
        if isinstance(e, ir.EVar):
            return Code(self.names[e.name], e.name == "weight")
        if isinstance(e, ir.EQty):
            return Code(self.quantities[(e.name, e.args)], True)
        if isinstance(e, ir.ETerm):
            return Code(TERMS[e.kind].forms[e.args], True)
        if isinstance(e, (ir.ENeg, ir.ENot)):
            inner = self.emit(e.operand)
            if isinstance(e, ir.ENot):
                return Code(f"~({inner.code})" if inner.prec < 5 else f"~{inner.code}", True, 3)
            return Code(f"-({inner.code})" if inner.prec < 3 else f"-{inner.code}", inner.tensor, 3)
        if isinstance(e, (ir.EBin, ir.ECmp, ir.EBool)):
            key = "cmp" if isinstance(e, ir.ECmp) else e.op
            p = _PREC[key]
            left, right = self.emit(e.left), self.emit(e.right)
            if isinstance(e, ir.EBool):  # tensors: & and | bind tighter than comparisons, so parenthesise
                lc = left.code if left.prec == 5 else f"({left.code})"
                rc = right.code if right.prec == 5 else f"({right.code})"
                return Code(f"{lc} {'&' if e.op == 'and' else '|'} {rc}", True, p)
            lc = f"({left.code})" if left.prec < p or (e.op == "^" and left.prec <= p) else left.code
            rc = f"({right.code})" if (right.prec <= p and e.op != "^") or right.prec < p else right.code
            op = {"^": "**"}.get(e.op, e.op)
            return Code(f"{lc} {op} {rc}", left.tensor or right.tensor, p)
        if isinstance(e, ir.EFunc):
            args = [self.emit(a) for a in e.args]
            tensor = any(a.tensor for a in args)
            codes = [a.code for a in args]
            if not tensor:
                return Code(_SCALAR_FN[e.fn].format(*codes), False)
            if e.fn in _TENSOR_FN:
                return Code(_TENSOR_FN[e.fn].format(*codes), True)
            if e.fn in ("min", "max"):
                a, b = args
                if a.tensor and b.tensor:
                    return Code(f"torch.{'minimum' if e.fn == 'min' else 'maximum'}({a.code}, {b.code})", True)
                t, s = (a, b) if a.tensor else (b, a)
                return Code(f"torch.clamp({t.code}, {'max' if e.fn == 'min' else 'min'}={s.code})", True)
            v, lo, hi = args  # clamp
            if not v.tensor:
                v = Code(f"torch.as_tensor({v.code})", True)
            if lo.tensor or hi.tensor:
                lo_c = lo.code if lo.tensor else f"torch.as_tensor({lo.code})"
                hi_c = hi.code if hi.tensor else f"torch.as_tensor({hi.code})"
                return Code(f"torch.minimum(torch.maximum({v.code}, {lo_c}), {hi_c})", True)
            return Code(f"torch.clamp({v.code}, {lo.code}, {hi.code})", True)
        raise TypeError(f"unknown IR node {e!r}")  # pragma: no cover


def wrapped(code: str, e: ir.E, emitter: Expressions, prefix: int, width: int = 100) -> str:
    """One line if it fits, else parenthesised with one additive term per line (as ruff formats)."""
    if prefix + len(code) <= width:
        return code
    terms: list[tuple[str, ir.E]] = []
    node = e
    while isinstance(node, ir.EBin) and node.op in "+-":
        terms.insert(0, (node.op, node.right))
        node = node.left
    terms.insert(0, ("", node))
    lines = []
    for op, term in terms:
        t = emitter.emit(term)
        text = f"({t.code})" if op == "-" and t.prec <= 1 else t.code
        lines.append(f"        {op + ' ' if op else ''}{text}")
    return "(\n" + "\n".join(lines) + "\n    )"


# at the final adversarial point (weights): field of AttackResult -> code computing it
_FINAL = {
    ("margin", ()): ("margin", "margin(final_logits, y)"),
    ("loss", ()): ("ce", "cross_entropy(final_logits, y)"),
    ("prob", ("adv",)): ("prob_adv", "true_prob(final_logits, y)"),
    ("prob", ("nat",)): ("prob_nat", "true_prob(nat_logits, y)"),
    ("max_wrong_prob", ("adv",)): ("max_wrong_adv", "max_wrong_prob(final_logits, y)"),
    ("max_wrong_prob", ("nat",)): ("max_wrong_nat", "max_wrong_prob(nat_logits, y)"),
    ("pm", ()): ("pm", "probabilistic_margin(final_logits, y)"),
    ("grad_norm", ("1",)): ("grad_norm_1", "grad_norm(final_grad, 1)"),
    ("grad_norm", ("2",)): ("grad_norm_2", "grad_norm(final_grad, 2)"),
    ("grad_norm", ("inf",)): ("grad_norm_inf", "grad_norm(final_grad, math.inf)"),
    ("fosc", ()): ("fosc", "fosc(final_grad, x_adv - x, {eps}, NORM)"),
}
# FOSC is >= 0 inside the ball; at the box's corners float rounding can put it a hair below (about 3
# samples in 10,000 in float32), which a weight would report as negative: clamped, as in the formula
# at the current iterate (stop rules), inside the attack loop: name -> code
_ITERATE = {
    ("margin", ()): "m",
    ("loss", ()): "cross_entropy(logits.detach(), ya)",
    ("prob", ("adv",)): "true_prob(logits.detach(), ya)",
    ("prob", ("nat",)): "true_prob(nat_logits[active], ya)",
    ("max_wrong_prob", ("adv",)): "max_wrong_prob(logits.detach(), ya)",
    ("max_wrong_prob", ("nat",)): "max_wrong_prob(nat_logits[active], ya)",
    ("pm", ()): "probabilistic_margin(logits.detach(), ya)",
    ("grad_norm", ("1",)): "grad_norm(grad, 1)",
    ("grad_norm", ("2",)): "grad_norm(grad, 2)",
    ("grad_norm", ("inf",)): "grad_norm(grad, math.inf)",
    ("fosc", ()): "fosc(grad, xa.detach() - x[active], {eps}, NORM)",
    ("kappa", ()): "kappa[active]",
    ("steps", ()): "steps[active]",
}


# --- the whole module --------------------------------------------------------------------------


@dataclass
class Lowered:
    """Everything the templates need, in the order a reader meets it."""

    program: ir.Program
    version: str
    standalone: bool = False
    emitted: dict[str, Emitted] = field(default_factory=dict)
    v: dict[str, str] = field(default_factory=dict)  # setting name -> code inside a function of epoch
    hoist: dict[str, list[str]] = field(default_factory=dict)  # function -> "name = name_at(epoch)" lines
    final_fields: list[tuple[str, str]] = field(default_factory=list)  # AttackResult field -> code
    final_needs_grad: bool = False
    nat_logits: bool = False  # the attack computes the natural logits once (KL attack, quantities of nat)
    stop_code: str = ""
    weight_code: str = ""
    weight_bindings: list[tuple[str, str]] = field(default_factory=list)
    loss_code: str = ""
    loss_bindings: list[tuple[str, str]] = field(default_factory=list)
    stop_bindings: list[tuple[str, str]] = field(default_factory=list)
    uses_nat: bool = False
    uses_adv: bool = True
    uses_weight: bool = False
    attack_imports: list[str] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    evaluate_text: str = ""

    def __getattr__(self, item):  # templates read program fields directly: lowered.attack, ...
        return getattr(self.program, item)


def lower(program: ir.Program, version: str, standalone: bool = False) -> Lowered:
    low = Lowered(program, version, standalone)
    p, a, f, w = program, program.attack, program.form, program.weight
    used = _used_settings(program)
    taken: set[str] = set()
    for s in program.settings:
        if s.key in used:
            low.emitted[s.key] = Emitted(s, _py_name(s, taken), s.integer)
    epochs = p.train.epochs if p.train is not None else None
    numbers = Numbers(low.emitted, epochs)
    for em in low.emitted.values():
        _emit_function(em, numbers)
    by_name = {em.setting.name: em for em in low.emitted.values()}
    low.v = {name: em.call() for name, em in by_name.items()}

    # per-sample quantities: at the final point for the weight, at the iterate for the stop rule
    eps = low.emitted["threat.eps"].call()
    wq = ir.quantities(w.expr) if w.kind == "expr" else set()
    for key in sorted(wq - {("kappa", ()), ("steps", ())}):
        name, code = _FINAL[key]
        low.final_fields.append((name, code.format(eps=eps)))
    low.final_needs_grad = any(k[0] in ("grad_norm", "fosc") for k in wq)
    sq = ir.quantities(f.stop) if f.stop is not None else set()
    low.nat_logits = a.loss == "kl" or any(k[1] == ("nat",) for k in wq | sq)

    def names_for(bindings) -> dict[str, str]:
        names = {n: em.call() for n, em in by_name.items()}
        names["K"] = low.emitted["attack.steps"].call()
        names["epoch"] = "epoch"
        names["progress"] = "epoch / EPOCHS"
        for b in bindings:
            names[b.name] = b.name
        return names

    if f.stop is not None:
        quantities = {k: code.format(eps=eps) for k, code in _ITERATE.items()}
        names = names_for(f.bindings)
        low.stop_code = Expressions(names, quantities).emit(f.stop).code
        low.stop_bindings = [(b.name, low.emitted[b.key].call()) for b in f.bindings]
    if w.kind == "expr":
        names = names_for(w.bindings)
        if w.lam is not None:
            names["lambda"] = low.emitted[w.lam.key].call()
        quantities = {key: f"result.{_FINAL[key][0]}" for key in _FINAL}
        quantities |= {("kappa", ()): "kappa", ("steps", ()): "result.steps.to(kappa.dtype)"}
        out = Expressions(names, quantities).emit(w.expr)
        low.weight_code = out.code if out.tensor else f"torch.full_like(kappa, {out.code})"
        low.weight_bindings = [(b.name, low.emitted[b.key].call()) for b in w.bindings]
    names = names_for(p.loss.bindings)
    names["weight"] = "w"
    quantities = {("kappa", ()): "result.kappa.to(logits_adv.dtype)", ("steps", ()): "result.steps.to(logits_adv.dtype)"}
    emitter = Expressions(names, quantities)
    low.loss_code = wrapped(emitter.emit(p.loss.expr).code, p.loss.expr, emitter, len("    per_sample = "))
    low.loss_bindings = [(b.name, low.emitted[b.key].call()) for b in p.loss.bindings]
    nodes = list(ir.walk(p.loss.expr))
    low.uses_nat = any(isinstance(n, ir.ETerm) and "nat" in n.args for n in nodes)
    low.uses_adv = any(isinstance(n, ir.ETerm) and "adv" in n.args for n in nodes) or any(
        isinstance(n, ir.EQty) for n in nodes)
    low.uses_weight = "weight" in ir.variables(p.loss.expr)
    if p.train is not None:
        low.train = _train(p, low)
    low.evaluate_text = " ".join(eval_text(e) for e in p.evaluate)
    return low


def _used_settings(p: ir.Program) -> set[str]:
    """The settings generated code reads (the rest stay in the spec and the run's records)."""
    a, f, w = p.attack, p.form, p.weight
    keys = {"threat.eps", a.steps.key, a.step_size.key}
    if a.noise.const != 0:
        keys.add(a.noise.key)
    if a.init == "normal":
        keys.add("attack.init_scale")
    if a.loss == "cw":
        keys.add("attack.confidence")
    if f.kind == "minmin":
        keys |= {f.tau.key}
        if f.stop is None:
            keys.add(f.rho.key)
    if w.lam is not None and (w.kind == "gair" or "lambda" in ir.variables(w.expr)):
        keys.add(w.lam.key)
    for b in (*w.bindings, *p.loss.bindings, *f.bindings):
        keys.add(b.key)
    if p.train is not None:
        keys |= {p.train.lr.key, "train.epochs"}
        keys |= {v.key for _, v in p.train.optim_args if isinstance(v, ir.Setting)}
    # and whatever those refer to, transitively
    settings = {s.key: s for s in p.settings}
    todo = list(keys)
    while todo:
        s = settings.get(todo.pop())
        if s is None or s.const is not None:
            continue
        for n in ir.xwalk(s.value):
            if isinstance(n, ir.XRef) and n.key not in keys:
                keys.add(n.key)
                todo.append(n.key)
    for e in (w.expr, f.stop, p.loss.expr):  # settings named in expressions
        if e is not None:
            keys |= {s.key for s in p.settings if s.name in ir.variables(e)}
    return {k for k in keys if k in settings}


def _emit_function(em: Emitted, numbers: Numbers) -> None:
    s = em.setting
    if em.constant:
        return
    if s.per_step:
        em.signature = "epoch: int, step: int, steps_per_epoch: int"
        if isinstance(s.value, ir.XSched):
            em.body, em.doc = _step_body(s.value)
        else:  # an expression of settings that follow the step (momentum = 0.9 - 0.5 * lr)
            em.body, em.doc = [f"return {numbers.code(s.value)[0]}"], f"{s.text}, per step"
        return
    if isinstance(s.value, ir.XSched):
        em.body, em.doc = _sched_body(s.value, em.integer), f"{s.value.kind} schedule over epochs"
        return
    # an expression: schedules inside it become `_sched` helpers of the same function
    helpers: list[str] = []
    counter = itertools.count(1)

    def hoist(x: ir.X) -> ir.X:
        if isinstance(x, ir.XSched):
            name = f"part{next(counter)}"
            helpers.append(name)
            em.body += [f"def {name}(epoch):", *("    " + line for line in _sched_body(x, False))]
            return ir.XRef(f"<{name}>", name)
        if isinstance(x, ir.XBin):
            return ir.XBin(x.op, hoist(x.left), hoist(x.right))
        if isinstance(x, ir.XNeg):
            return ir.XNeg(hoist(x.operand))
        if isinstance(x, ir.XFunc):
            return ir.XFunc(x.fn, tuple(hoist(a) for a in x.args))
        return x

    value = hoist(s.value)
    for name in helpers:
        numbers.emitted[f"<{name}>"] = _Helper(name)
    code, _ = numbers.code(value)
    em.body.append(f"return int({code})" if em.integer else f"return {code}")
    em.doc = f"{s.text}, per epoch"


class _Helper:
    """A schedule local to one setting's function (``part1(epoch)``)."""

    def __init__(self, name: str):
        self.name = name

    def call(self, epoch: str = "epoch") -> str:
        return f"{self.name}({epoch})"


def eval_text(e: ir.EvalAttack) -> str:
    """An evaluation attack in the language (checked again when the program runs)."""
    from .vocabulary.evaluation import ATTACKS

    entry = ATTACKS[e.name]
    defaults = {k: p.default for k, p in entry.params.items()}
    args = [f"{k} = {literal(v) if not isinstance(v, str) else v}" for k, v in e.params
            if v is not None and (v != defaults.get(k) or (k == "steps" and entry.steps_label))]
    return f"{e.name}({', '.join(args)})" if args else e.name


def _train(p: ir.Program, low: Lowered) -> dict:
    t = p.train
    data = DATASETS[t.data]
    args = dict(t.data_args)
    parts = []
    if "root" in data.params:  # files on disk: the command line's --data-root wins over the spec's root
        root = args.pop("root", None)
        parts.append(f"args.data_root or {literal(root)}" if root else "args.data_root")
        if "download" in data.params:
            parts.append("download=True" if args.pop("download", False) else "download=args.download")
    parts += [f"{k}={literal(v)}" for k, v in sorted(args.items())]
    user = t.user_model
    first = "0, 0, len(loader)"  # the first step, for settings that follow the step

    def at_start(v) -> str:
        if not isinstance(v, ir.Setting):
            return literal(v)
        em = low.emitted[v.key]
        return f"{em.py}_at({first})" if v.per_step else em.call("0")

    optim_args = ", ".join(f"{k}={at_start(v)}" for k, v in t.optim_args)
    momentum = dict(t.optim_args).get("momentum")
    lr = low.emitted[t.lr.key]
    return {
        "reader": data.reader,
        "data_call": f"{data.reader}({', '.join(parts)})",
        "builder": None if user else MODELS[t.model].builder,
        "model_args": ", ".join(f"{k}={literal(v)}" for k, v in t.model_args),
        "user_model": user,
        "optim_class": OPTIMIZER_CLASSES[t.optim],
        "optim_args": optim_args,
        "lr_first": at_start(lr.setting),
        "lr_per_step": lr.setting.per_step,
        # momentum that follows the epoch or the step is set beside the learning rate
        "momentum_call": (None if not isinstance(momentum, ir.Setting) else
                          low.emitted[momentum.key].call() if not momentum.per_step else "momentum_at(epoch, step, len(loader))"),
        "momentum_per_step": isinstance(momentum, ir.Setting) and momentum.per_step,
        "mixed_precision": MIXED_PRECISION[t.precision],
        "uniform_linf": p.attack.init == "uniform" and p.threat.norm == "linf",
    }
