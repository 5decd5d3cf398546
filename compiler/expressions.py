"""Stage 2b, per-sample expressions: the weight, the loss and the stop rule, checked into
``ir.E`` with every name resolved (where-bindings, settings and built-in scalars, per-sample
quantities, loss terms, functions), and the names a binding may not take. Mixed into
:class:`.check.Checker`; what each quantity, term and function means is in
``compiler/vocabulary/quantities.py``."""

from __future__ import annotations

import builtins
import functools
import keyword
import math
from dataclasses import dataclass, field

from . import ast, ir
from .diagnostics import did_you_mean
from .vocabulary.quantities import FUNCTIONS, QUANTITIES, SCALARS, TERMS

PROGRESS_NEEDS_TRAIN = "'progress' needs a train block (epochs)"
PROGRESS_HINT = "progress is epoch / epochs: add a train block, or write the epoch"


@dataclass
class Scope:
    """What the names of a per-sample expression mean (weight, loss or stop rule)."""

    where: str  # weight | loss | stop
    bindings: set[str] = field(default_factory=set)
    scalars: set[str] = field(default_factory=set)  # settings and built-in scalars (K, epoch, ...)
    terms: bool = False  # loss terms allowed (the loss)
    quantities: set[str] = field(default_factory=lambda: set(QUANTITIES))  # detached per-sample ones allowed
    extra: set[str] = field(default_factory=set)  # e.g. `weight` inside the loss
    progress: bool = True  # False without a train block (no epochs to divide by)


class ExpressionChecks:
    """The expression part of :class:`.check.Checker` (it supplies ``error``)."""

    def expression(self, expr, scope: Scope) -> ir.E | None:
        """Translate a weight/loss/stop expression to IR, validating every name it uses."""
        where = scope.where
        if isinstance(expr, ast.Num):
            return ir.EConst(expr.value)
        if isinstance(expr, ast.Str):
            self.error(f"a {where} expression cannot contain a string", expr.span)
            return None
        if isinstance(expr, ast.Name):
            name = expr.id
            if name == "progress" and not scope.progress and name not in scope.bindings:
                self.error(PROGRESS_NEEDS_TRAIN, expr.span, PROGRESS_HINT)
                return None
            if name in scope.bindings or name in scope.scalars or name in scope.extra:
                return ir.EVar(name)
            if name in QUANTITIES and name not in scope.quantities and not (scope.terms and name in TERMS):
                self._not_here(name, expr.span, scope)
                return None
            if name in scope.quantities and () in QUANTITIES[name].args:
                return ir.EQty(name)
            if name == "inf":
                return ir.EConst(math.inf)
            if (scope.terms and name in TERMS) or name in scope.quantities:
                term = scope.terms and name in TERMS
                forms = TERMS[name].forms if term else QUANTITIES[name].args
                kind = "a loss term" if term else "a per-sample quantity"
                self.error(f"'{name}' is {kind} and needs arguments", expr.span,
                           f"e.g. {name}({', '.join(sorted(forms)[0])})")
                return None
            known = sorted(scope.bindings | scope.scalars | scope.extra
                           | {q for q in scope.quantities if () in QUANTITIES[q].args})
            self.error(f"unknown variable '{name}' in {where} expression", expr.span,
                       did_you_mean(name, known) or f"known: {', '.join(known)}")
            return None
        if isinstance(expr, (ast.Neg, ast.Not)):
            inner = self.expression(expr.operand, scope)
            if inner is None:
                return None
            return ir.ENeg(inner) if isinstance(expr, ast.Neg) else ir.ENot(inner)
        if isinstance(expr, (ast.BinOp, ast.Compare, ast.BoolOp)):
            left = self.expression(expr.left, scope)
            right = self.expression(expr.right, scope)
            if left is None or right is None:
                return None
            cls = {ast.BinOp: ir.EBin, ast.Compare: ir.ECmp, ast.BoolOp: ir.EBool}[type(expr)]
            return cls(expr.op, left, right)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope)
        self.error(f"unexpected element in {where} expression", getattr(expr, "span", None))
        return None

    def _call(self, expr: ast.Call, scope: Scope) -> ir.E | None:
        name, where = expr.func.name, scope.where
        plain = [a.id if isinstance(a, ast.Name) else a.text if isinstance(a, ast.Num) else None
                 for a in expr.args]
        if scope.terms and name in TERMS:
            forms = TERMS[name].forms
            if tuple(plain) not in forms:
                if any(p not in ("nat", "adv") for p in plain):
                    bad = next(a for a, p in zip(expr.args, plain, strict=True) if p not in ("nat", "adv"))
                    self.error(f"{name}(...) takes 'nat' or 'adv'", getattr(bad, "span", None))
                    return None
                shown = " or ".join(f"{name}({', '.join(f)})" for f in sorted(forms))
                self.error(f"{name}({', '.join(plain)}) is not a loss term", expr.span, f"write {shown}")
                return None
            return ir.ETerm(name, tuple(plain))
        if name in scope.quantities and QUANTITIES[name].args == ((),) and not (scope.terms and name in TERMS):
            self.error(f"'{name}' takes no arguments", expr.span, f"write {name}")
            return None
        if name in scope.quantities and QUANTITIES[name].args != ((),):
            forms = QUANTITIES[name].args
            if tuple(plain) not in forms:
                shown = " or ".join(f"{name}({', '.join(f)})" for f in forms)
                self.error(f"{name}({', '.join(str(p) for p in plain)}) is not a per-sample quantity", expr.span,
                           f"write {shown}")
                return None
            return ir.EQty(name, tuple(plain))
        if name in QUANTITIES and name not in scope.quantities and not (scope.terms and name in TERMS):
            self._not_here(name, expr.func.span, scope)
            return None
        if name in TERMS and not scope.terms:
            what = "stop rule" if where == "stop" else where
            self.error(f"'{name}' is a loss term, which only the loss can use", expr.func.span,
                       f"the {what} reads per-sample quantities: 'loss' is CE(f(x'), y)" if name == "ce" else None)
            return None
        if name not in FUNCTIONS:
            choices = set(FUNCTIONS) | (set(TERMS) if scope.terms else set())
            choices |= {q for q in scope.quantities if QUANTITIES[q].args != ((),)}
            self.error(f"unknown function '{name}' in {where} expression", expr.func.span,
                       did_you_mean(name, choices) or f"functions: {', '.join(sorted(choices))}")
            return None
        lo, hi = FUNCTIONS[name]
        if any(isinstance(a, (ast.KwArg, ast.Pair)) for a in expr.args):
            self.error(f"{name}(...) takes plain arguments", expr.span)
            return None
        if not lo <= len(expr.args) <= hi:
            self.error(f"{name}(...) takes {lo} argument{'s' if lo > 1 else ''}, got {len(expr.args)}", expr.span)
            return None
        args = [self.expression(a, scope) for a in expr.args]
        if any(a is None for a in args):
            return None
        return ir.EFunc(name, tuple(args))

    def _not_here(self, name: str, span, scope: Scope) -> None:
        """A per-sample quantity where the expression cannot read it (the loss reads kappa and
        steps only: the others are detached values of the attack, which weights carry in)."""
        self.error(f"the {scope.where} cannot read the per-sample quantity '{name}'", span,
                   f"read it in the weight and multiply: weight ... {name} ..., loss ce(adv) * weight")

    def binding_name(self, b: ast.Binding, special: set[str], builtin: set[str]) -> bool:
        """Whether a where-binding's name may be bound (reports why not)."""
        name = b.name.name
        if name in builtin - special:
            self.error(f"'{name}' is a built-in name and cannot be bound", b.name.span)
            return False
        taken = reserved_names()
        if name not in special and (name in taken or name.upper() in taken or name.startswith("_")
                                    or keyword.iskeyword(name) or hasattr(builtins, name)):
            self.error(f"'{name}' is reserved by the generated code", b.name.span, "choose another name for this binding")
            return False
        return True


def builtin_names() -> set[str]:
    """Names with a fixed meaning in expressions: they cannot be where-bindings."""
    return set(QUANTITIES) | set(TERMS) | set(FUNCTIONS) | set(SCALARS) | {"nat", "adv", "inf", "weight", "lambda"}


@functools.cache
def reserved_names() -> frozenset[str]:
    """Every identifier generated code uses: a binding (or its upper-case constant) may not be one.

    Derived from ``compiler/templates/*.j2`` -- the code lines, not their comments or jinja tags --
    plus the few names ``lower.py`` writes itself, so a template that starts using a new local name
    reserves it at once.
    """
    import re

    from .lower import LOCALS, TEMPLATES

    names: set[str] = set()
    for path in sorted(TEMPLATES.glob("*.j2")):
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", " ", text, flags=re.S)
        text = re.sub(r'""".*?"""', " ", text, flags=re.S)
        text = re.sub(r'"[^"\n]*"', " ", text)
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            names |= set(re.findall(r"\b[A-Za-z_][A-Za-z0-9_]*\b", code))
    return frozenset(names | LOCALS)
