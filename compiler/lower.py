"""Stage 3: ``ir.Program`` -> the values and Python fragments the templates lay out.

Everything a template prints comes from here: numbers through ``repr`` of checked values,
names from fixed tables, expressions from the IR walked node by node. No text of the spec
is ever pasted into code (spec lines appear only inside comments, sanitised), so a spec
cannot inject code into the module it compiles to.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from . import ir

# Python spelling of the expression functions, for scalars and for per-sample tensors.
_SCALAR_FN = {
    "tanh": "math.tanh({0})", "exp": "math.exp({0})", "log": "math.log({0})", "sqrt": "math.sqrt({0})",
    "abs": "abs({0})", "floor": "math.floor({0})", "sigmoid": "1 / (1 + math.exp(-({0})))",
    "min": "min({0}, {1})", "max": "max({0}, {1})", "clamp": "min(max({0}, {1}), {2})",
}  # fmt: skip
_TENSOR_FN = {
    "tanh": "torch.tanh({0})", "exp": "torch.exp({0})", "log": "torch.log({0})", "sqrt": "torch.sqrt({0})",
    "abs": "torch.abs({0})", "floor": "torch.floor({0})", "sigmoid": "torch.sigmoid({0})",
}  # fmt: skip
_TERM = {
    ("ce", ("adv",)): "losses.cross_entropy(logits_adv, y)",
    ("ce", ("nat",)): "losses.cross_entropy(logits_nat, y)",
    ("bce", ("adv",)): "losses.boosted_ce(logits_adv, y)",
    ("kl", ("nat", "adv")): "losses.kl_div(logits_nat, logits_adv)",
    ("prob", ("adv",)): "losses.true_prob(logits_adv, y)",
    ("prob", ("nat",)): "losses.true_prob(logits_nat, y)",
}
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4}


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


@dataclass
class Schedule:
    """A number that may follow the epoch: either a constant or a function ``<name>_at``."""

    name: str  # python name of the constant (EPS) or function stem (eps)
    sched: ir.Sched
    origin: ir.Origin | None = None
    integer: bool = False

    @property
    def constant(self) -> bool:
        return isinstance(self.sched, ir.Const)

    def ref(self, epoch: str = "epoch") -> str:
        return self.name.upper() if self.constant else f"{self.name}_at({epoch})"

    def const_literal(self) -> str:
        v = self.sched.value
        return literal(int(v) if self.integer else (float(v) if not isinstance(v, float) else v))

    def body(self) -> list[str]:
        """Statement lines of ``def <name>_at(epoch)``."""
        s = self.sched
        num = (lambda v: literal(int(v))) if self.integer else (lambda v: literal(float(v)))
        if isinstance(s, ir.Piecewise):
            lines = []
            for e, v in reversed(s.points[1:]):
                lines += [f"if epoch >= {e}:", f"    return {num(v)}"]
            return lines + [f"return {num(s.points[0][1])}"]
        pts = s.points
        lines = [f"if epoch <= {pts[0][0]}:", f"    return {num(pts[0][1])}"]
        for (e0, v0), (e1, v1) in itertools.pairwise(pts):
            t = f"(epoch - {e0}) / {e1 - e0}"
            if isinstance(s, ir.Cosine):
                t = f"(1 - math.cos(math.pi * {t})) / 2"
            lines += [f"if epoch <= {e1}:", f"    t = {t}", f"    return {num(v0)} + ({num(v1)} - {num(v0)}) * t"]
        return lines + [f"return {num(pts[-1][1])}"]

    def kind(self) -> str:
        return {ir.Piecewise: "piecewise", ir.Linear: "linear", ir.Cosine: "cosine"}.get(type(self.sched), "constant")


@dataclass
class Emitted:
    code: str
    tensor: bool
    prec: int = 5


class ExprEmitter:
    """Walks a weight/loss expression and writes it as Python over scalars and tensors."""

    def __init__(self, names: dict[str, tuple[str, bool]]):
        self.names = names  # variable -> (python expression, is_tensor)

    def emit(self, e: ir.E) -> Emitted:
        if isinstance(e, ir.EConst):
            v = e.value
            return Emitted(literal(float(v) if isinstance(v, float) else v), False)
        if isinstance(e, ir.EVar):
            code, tensor = self.names[e.name]
            return Emitted(code, tensor)
        if isinstance(e, ir.ETerm):
            return Emitted(_TERM[(e.kind, e.args)], True)
        if isinstance(e, ir.ENeg):
            inner = self.emit(e.operand)
            code = f"-({inner.code})" if inner.prec < 3 else f"-{inner.code}"
            return Emitted(code, inner.tensor, 3)
        if isinstance(e, ir.EBin):
            p = _PREC[e.op]
            left, right = self.emit(e.left), self.emit(e.right)
            lc = f"({left.code})" if left.prec < p or (e.op == "^" and left.prec <= p) else left.code
            rc = f"({right.code})" if (right.prec <= p and e.op != "^") or right.prec < p else right.code
            op = "**" if e.op == "^" else e.op
            return Emitted(f"{lc} {op} {rc}", left.tensor or right.tensor, p)
        if isinstance(e, ir.EFunc):
            args = [self.emit(a) for a in e.args]
            tensor = any(a.tensor for a in args)
            codes = [a.code for a in args]
            if not tensor:
                return Emitted(_SCALAR_FN[e.fn].format(*codes), False)
            if e.fn in _TENSOR_FN:
                return Emitted(_TENSOR_FN[e.fn].format(*codes), True)
            if e.fn in ("min", "max"):
                a, b = args
                if a.tensor and b.tensor:
                    return Emitted(f"torch.{'minimum' if e.fn == 'min' else 'maximum'}({a.code}, {b.code})", True)
                t, s = (a, b) if a.tensor else (b, a)
                bound = "max" if e.fn == "min" else "min"
                return Emitted(f"torch.clamp({t.code}, {bound}={s.code})", True)
            v, lo, hi = args  # clamp
            if not v.tensor:
                v = Emitted(f"torch.as_tensor({v.code})", True)
            if lo.tensor or hi.tensor:
                lo_c = lo.code if lo.tensor else f"torch.as_tensor({lo.code})"
                hi_c = hi.code if hi.tensor else f"torch.as_tensor({hi.code})"
                return Emitted(f"torch.minimum(torch.maximum({v.code}, {lo_c}), {hi_c})", True)
            return Emitted(f"torch.clamp({v.code}, {lo.code}, {hi.code})", True)
        raise TypeError(f"unknown IR node {e!r}")  # pragma: no cover


def _wrapped(emitter: ExprEmitter, e: ir.E, prefix: int, width: int = 100) -> str:
    """One line if it fits, else parenthesised with one additive term per line (as ruff formats)."""
    code = emitter.emit(e).code
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


@dataclass
class Lowered:
    """Everything the templates need, in the order a reader meets it."""

    program: ir.Program
    version: str
    schedules: list[Schedule] = field(default_factory=list)
    weight_code: str | None = None
    loss_code: str = ""
    loss_bindings: list[tuple[str, str]] = field(default_factory=list)
    weight_bindings: list[tuple[str, str]] = field(default_factory=list)
    uses_nat: bool = False
    uses_adv: bool = True
    uses_weight: bool = False
    train_literal: str = ""
    evaluate_literal: str = ""

    def __getattr__(self, item):  # templates read program fields directly: lowered.attack, ...
        return getattr(self.program, item)


def lower(program: ir.Program, version: str) -> Lowered:
    low = Lowered(program, version)
    a, f, w, t = program.attack, program.form, program.weight, program.train
    sched = {}

    def add(name, s, origin, integer=False):
        sched[name] = Schedule(name, s, origin, integer)
        low.schedules.append(sched[name])
        return sched[name]

    add("eps", program.threat.eps, program.threat.origin)
    add("step_size", a.step_size, a.origin)
    add("noise", a.noise, a.origin)
    if f.kind == "minmin":
        add("tau", f.tau, f.origin, integer=True)
        add("rho", f.rho, f.origin)
    if w.kind in ("gair", "expr"):
        add("lam", w.lam, w.origin)
    for name, s in w.bindings:
        add(name, s, w.origin)
    for name, s in program.loss.bindings:
        add(name, s, program.loss.origin)
    add("lr", t.lr, dict(t.origins).get("optim"))

    if w.kind == "expr":
        names = {
            "kappa": ("kappa", True), "K": ("STEPS", False), "lambda": ("lam", False), "epoch": ("epoch", False),
            "margin": ("result.margin", True), "loss": ("result.ce", True),
        }  # fmt: skip
        for name, _ in w.bindings:
            names[name] = (name, False)
        out = ExprEmitter(names).emit(w.expr)
        low.weight_code = out.code if out.tensor else f"torch.full_like(kappa, {out.code})"
        low.weight_bindings = [(n, sched[n].ref()) for n, _ in w.bindings]

    names = {"weight": ("w", True), "kappa": ("result.kappa.to(logits_adv.dtype)", True), "K": ("STEPS", False),
             "epoch": ("epoch", False)}
    for name, _ in program.loss.bindings:
        names[name] = (name, False)
    low.loss_code = _wrapped(ExprEmitter(names), program.loss.expr, len("    per_sample = "))
    low.loss_bindings = [(n, sched[n].ref()) for n, _ in program.loss.bindings]
    nodes = list(ir.walk(program.loss.expr))
    low.uses_nat = any(isinstance(n, ir.ETerm) and "nat" in n.args for n in nodes)
    low.uses_adv = any(isinstance(n, ir.ETerm) and "adv" in n.args for n in nodes) or any(
        isinstance(n, ir.EVar) and n.name == "kappa" for n in nodes)
    low.uses_weight = any(isinstance(n, ir.EVar) and n.name == "weight" for n in nodes)

    train = {
        "data": t.data, "data_args": dict(t.data_args), "model": t.model, "model_args": dict(t.model_args),
        "epochs": t.epochs, "batch": t.batch, "seed": t.seed, "optim": t.optim, "optim_args": dict(t.optim_args),
        "precision": t.precision, "val": t.val, "augment": t.augment, "sync_bn": t.sync_bn,
        "channels_last": t.channels_last, "compile": t.compile,
    }  # fmt: skip
    low.train_literal = dict_literal(train, indent=0)
    evals = [dict(params, name=e.name) for e in program.evaluate for params in [dict(e.params)]]
    low.evaluate_literal = "[\n" + "".join(f"    {dict_literal(e, inline=True)},\n" for e in evals) + "]"
    return low


def dict_literal(d: dict, indent: int = 0, inline: bool = False) -> str:
    items = sorted(d.items())
    if inline:
        return "{" + ", ".join(f"{literal(k)}: {value_literal(v)}" for k, v in items) + "}"
    pad = " " * (indent + 4)
    body = "".join(f"{pad}{literal(k)}: {value_literal(v, indent + 4)},\n" for k, v in items)
    return "{\n" + body + " " * indent + "}"


def value_literal(v, indent: int = 0) -> str:
    if isinstance(v, dict):
        return dict_literal(v, inline=True) if v else "{}"
    return literal(v)
