"""Stage 2b: the checker of values -- numbers, schedules, choices, clause heads, expressions.

``Checker`` turns the syntax of one value into its IR (``ir.X`` for numbers, ``ir.E`` for
per-sample expressions) or reports why it cannot, never stopping at the first problem. Which
clauses exist and what they mean is in ``compiler/vocabulary``; resolving ``extends`` and
``--set`` is ``compiler/resolve.py``; building and settling the whole program (references
between settings, ranges over the run, warnings) is ``compiler/program.py``.

The entry points ``check_file``, ``check_text`` and ``check_attacks`` run all of it.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import keyword
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import ast, ir
from .diagnostics import Diagnostic, Reporter, Span, SpecError, did_you_mean, one_of
from .parse import parse_eval_list, parse_expr, parse_text
from .vocabulary import Param, fmt_num
from .vocabulary.quantities import FUNCTIONS, QUANTITIES, SCALARS, TERMS

SCHEDULES = ("piecewise", "linear", "cosine", "onecycle", "cyclic")
STEP_SCHEDULES = {  # per-step schedules of the learning rate, with their named parameters
    "onecycle": {"max": Param("num", required=True, lo=0, lo_strict=True),
                 "pct_start": Param("num", default=0.3, lo=0, lo_strict=True, hi=1, hi_strict=True),
                 "div": Param("num", default=25.0, lo=0, lo_strict=True),
                 "final_div": Param("num", default=1e4, lo=0, lo_strict=True),
                 "anneal": Param("choice", default="cos", choices=("cos", "linear"))},
    "cyclic": {"min": Param("num", default=0.0, lo=0), "max": Param("num", required=True, lo=0, lo_strict=True),
               "cycles": Param("int", default=1, lo=1)},
}  # fmt: skip


def show(v) -> str:
    """A number for a message, short whatever its size."""
    if isinstance(v, int) and abs(v) >= 10**15:
        return f"{float(v):.3g}"
    if isinstance(v, float) and (math.isinf(v) or abs(v) >= 1e15):
        return f"{v:.3g}"
    return fmt_num(v)


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


class Checker:
    """Checks single values against the vocabulary; collects diagnostics in ``report``."""

    def __init__(self, report: Reporter, setting_names: dict[str, str] | None = None):
        self.report = report
        self.setting_names = setting_names or {}  # name -> setting key, for references

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.report.error(message, span, hint)

    # constants --------------------------------------------------------------------------
    def const(self, expr, *, allow_inf: bool = False):
        """Fold a constant expression (numbers, + - * / ^, inf) or report why it is not one."""
        if isinstance(expr, ast.Num):
            v = expr.value
            if isinstance(v, float) and math.isinf(v):
                self.error("number is too large", expr.span, "write inf where an infinite value is meant")
                return None
            return v
        if isinstance(expr, ast.Name):
            if expr.id == "inf" and allow_inf:
                return math.inf
            if expr.id in ("true", "false"):
                self.error(f"expected a number, got '{expr.id}'", expr.span)
                return None
            self.error(f"expected a number, got the name '{expr.id}'", expr.span)
            return None
        if isinstance(expr, ast.Neg):
            v = self.const(expr.operand, allow_inf=allow_inf)
            return None if v is None else -v
        if isinstance(expr, ast.BinOp):
            a = self.const(expr.left, allow_inf=allow_inf)
            b = self.const(expr.right, allow_inf=allow_inf)
            if a is None or b is None:
                return None
            return self.arith(expr.op, a, b, expr.span, allow_inf)
        if isinstance(expr, ast.Str):
            self.error("expected a number, got a string", expr.span)
            return None
        if isinstance(expr, ast.Call):
            self.error(f"expected a number, got a call to '{expr.func.name}'", expr.span,
                       "schedules are piecewise(...), linear(...) or cosine(...)"
                       if expr.func.name not in SCHEDULES else None)
            return None
        self.error("expected a number", getattr(expr, "span", None))
        return None

    def arith(self, op: str, a, b, span, allow_inf: bool = False):
        """``a op b`` as Python computes it, or a diagnostic (division by zero, overflow)."""
        try:
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            elif op == "/":
                r = a / b
            elif isinstance(a, int) and isinstance(b, int) and abs(b) <= 64 and abs(a) < 2**32:
                r = a**b
            else:
                r = float(a) ** float(b)  # floats: 9^9^9 overflows at once instead of running for hours
            if isinstance(r, complex) or (isinstance(r, float) and math.isnan(r)):
                raise ValueError
            if isinstance(r, int) and abs(r) > 10**18:
                raise OverflowError
        except ZeroDivisionError:
            self.error("division by zero", span)
            return None
        except (OverflowError, ValueError):
            self.error("this arithmetic has no finite real value", span)
            return None
        if isinstance(r, float) and math.isinf(r) and not allow_inf:
            self.error("number is too large", span)
            return None
        return r

    # numbers: settings ------------------------------------------------------------------
    def number(self, expr, param: Param, label: str, scope: dict[str, str] | None = None) -> ir.X | None:
        """A number as an expression of constants, schedules, the epoch and other settings.

        ``scope`` maps extra names (where-bindings of the same clause) to their setting keys.
        Constant arithmetic is folded here; references are resolved and ranges are checked over
        the whole run once every setting is known (``program.settle``).
        """
        return self._number(expr, param, label, scope or {})

    def _number(self, expr, param: Param, label: str, scope: dict[str, str]) -> ir.X | None:
        if isinstance(expr, ast.Num):
            v = self.const(expr, allow_inf=param.allow_inf)
            return None if v is None else ir.XConst(v)
        if isinstance(expr, ast.Name):
            name = expr.id
            if name == "inf" and param.allow_inf:
                return ir.XConst(math.inf)
            if name in ("epoch", "progress"):
                if not param.varies:
                    self.error(f"'{label}' is one value for the whole run; it cannot follow the {name}", expr.span)
                    return None
                return ir.XVar(name)
            key = scope.get(name) or self.setting_names.get(name)
            if key is not None:
                return ir.XRef(key, name)
            if name in ("true", "false"):
                self.error(f"expected a number, got '{name}'", expr.span)
                return None
            known = sorted(set(self.setting_names) | set(scope) | {"epoch", "progress"})
            self.error(f"unknown name '{name}' in '{label}'", expr.span,
                       did_you_mean(name, known) or "a number may use other settings by name, epoch and progress")
            return None
        if isinstance(expr, ast.Neg):
            inner = self._number(expr.operand, param, label, scope)
            if inner is None:
                return None
            if isinstance(inner, ir.XConst):
                return ir.XConst(-inner.value)
            return ir.XNeg(inner)
        if isinstance(expr, ast.BinOp):
            left = self._number(expr.left, param, label, scope)
            right = self._number(expr.right, param, label, scope)
            if left is None or right is None:
                return None
            if isinstance(left, ir.XConst) and isinstance(right, ir.XConst):
                v = self.arith(expr.op, left.value, right.value, expr.span, param.allow_inf)
                return None if v is None else ir.XConst(v)
            return ir.XBin(expr.op, left, right)
        if isinstance(expr, ast.Call):
            name = expr.func.name
            if name in SCHEDULES:
                if not param.varies:
                    self.error(f"'{label}' cannot follow a schedule", expr.func.span, "give one number")
                    return None
                return self.schedule(expr, param, label)
            if name in FUNCTIONS:
                lo, hi = FUNCTIONS[name]
                if any(isinstance(a, (ast.KwArg, ast.Pair)) for a in expr.args) or not lo <= len(expr.args) <= hi:
                    self.error(f"{name}(...) takes {lo} plain argument{'s' if lo > 1 else ''}", expr.span)
                    return None
                args = [self._number(a, param, label, scope) for a in expr.args]
                if any(a is None for a in args):
                    return None
                return ir.XFunc(name, tuple(args))
            self.error(f"expected a number, got a call to '{name}'", expr.span,
                       did_you_mean(name, SCHEDULES) or "schedules are piecewise(...), linear(...) or cosine(...)")
            return None
        if isinstance(expr, ast.Str):
            self.error("expected a number, got a string", expr.span)
            return None
        self.error("expected a number", getattr(expr, "span", None))
        return None

    def schedule(self, call: ast.Call, param: Param, label: str) -> ir.XSched | None:
        kind = call.func.name
        if kind in STEP_SCHEDULES:
            got = self.head_args(call, {kind: STEP_SCHEDULES[kind]}, "schedule", label)
            if got is None:
                return None
            options = tuple(sorted((k, v.value if isinstance(v, ir.XConst) else v) for k, v in got[1].items()))
            return ir.XSched(kind, (), "step", options)
        if param.kind == "int" and kind != "piecewise":
            self.error(f"'{label}' is a whole number, so it can only follow a piecewise schedule", call.func.span)
            return None
        points, ok, every = [], True, "epoch"
        for arg in call.args:
            if isinstance(arg, ast.KwArg) and arg.name.name == "every":
                if isinstance(arg.value, ast.Name) and arg.value.id in ("epoch", "step"):
                    every = arg.value.id
                else:
                    self.error("'every' is epoch or step", getattr(arg.value, "span", None))
                    ok = False
        if kind != "piecewise":
            # a point of an interpolation may sit on a strict bound: the value is there only at that
            # instant -- cosine(0: 0.1, 100: 0) over 100 epochs never reaches 0, linear(0: 0, 2: 0.2,
            # every = step) is 0 at the first step only. program.settle checks every epoch.
            param = param.touching()
        for arg in call.args:
            if isinstance(arg, ast.KwArg) and arg.name.name == "every":
                continue
            if not isinstance(arg, ast.Pair):
                self.error(f"{kind}(...) takes 'epoch: value' pairs", getattr(arg, "span", None),
                           f"e.g. {kind}(0: 0.1, 60: 0.01)")
                ok = False
                continue
            epoch = self.const(arg.key)
            value = self.const(arg.value, allow_inf=param.allow_inf)
            if epoch is None or value is None:
                ok = False
                continue
            # a schedule applied at every step may change within an epoch (12.8: after 12.8 epochs)
            if (isinstance(epoch, float) and not epoch.is_integer() and every == "epoch") or epoch < 0:
                self.error("a schedule's epochs are whole numbers >= 0", arg.key.span,
                           "a fraction of an epoch needs every = step" if epoch >= 0 else None)
                ok = False
                continue
            value = self.in_range(value, arg.value, param, label)
            if value is None:
                ok = False
                continue
            if points and epoch <= points[-1][0]:
                self.error("a schedule's epochs must increase", arg.key.span)
                ok = False
                continue
            points.append((int(epoch) if float(epoch).is_integer() else float(epoch), value))
        if not ok:
            return None
        if not points:
            self.error(f"{kind}(...) needs at least one 'epoch: value' pair", call.span)
            return None
        if kind == "piecewise":
            if points[0][0] != 0:
                self.error("a piecewise schedule starts at epoch 0", call.args[0].key.span, "add '0: value' first")
                return None
            return ir.XSched("piecewise", tuple(points), every)
        if len(points) < 2:
            self.error(f"{kind}(...) needs at least two points", call.span)
            return None
        return ir.XSched(kind, tuple((e, float(v)) for e, v in points), every)

    def in_range(self, v, expr, param: Param, label: str, at: str = ""):
        """``v`` if it is a whole number where one is needed and within the parameter's range."""
        span = expr if isinstance(expr, Span) else getattr(expr, "span", None)
        if param.kind == "int":
            if isinstance(v, float) and not v.is_integer():
                self.error(f"'{label}' must be a whole number, got {v!r}{at}", span)
                return None
            v = int(v)
        if param.violated(v):
            self.error(f"'{label}' must be {param.range_text()}, got {show(v)}{at}", span)
            return None
        return v

    # any parameter ------------------------------------------------------------------------
    def scalar(self, expr, param: Param, label: str, scope: dict[str, str] | None = None):
        """A parameter of any kind: a number (``ir.X``), a choice, a string or a bool."""
        if param.kind in ("num", "int"):
            return self.number(expr, param, label, scope)
        if param.kind == "choice":
            if not isinstance(expr, ast.Name):
                self.error(f"'{label}' must be one of {one_of(param.choices)}", getattr(expr, "span", None))
                return None
            if expr.id not in param.choices:
                self.error(f"unknown {label} '{expr.id}'", expr.span,
                           did_you_mean(expr.id, param.choices) or f"choose {one_of(param.choices)}")
                return None
            return expr.id
        if param.kind == "bool":
            if isinstance(expr, ast.Name) and expr.id in ("true", "false"):
                return expr.id == "true"
            self.error(f"'{label}' must be true or false", getattr(expr, "span", None))
            return None
        if param.kind == "str":
            if not isinstance(expr, ast.Str):
                self.error(f"'{label}' must be a string in double quotes", getattr(expr, "span", None))
                return None
            return expr.value
        return expr  # "stop": the builder checks it as a per-sample condition

    def head_args(self, value, table: dict[str, dict[str, Param]], what: str, section: str,
                  scope: dict[str, str] | None = None):
        """Check ``head(k = v, ...)`` against a table of heads; returns (head, {param: value}) or None.

        Defaults fill the parameters not given (numbers as ``ir.XConst``).
        """
        if isinstance(value, ast.Name):
            head, args, head_span = value.id, (), value.span
        elif isinstance(value, ast.Call):
            head, args, head_span = value.func.name, value.args, value.func.span
        else:
            self.error(f"expected {what} here, e.g. {next(iter(table))}(...)", getattr(value, "span", None),
                       f"one of {one_of(table)}")
            return None
        if head not in table:
            self.error(f"unknown {what} '{head}'", head_span, did_you_mean(head, table) or f"one of {one_of(table)}")
            return None
        params = table[head]
        out, given, guessed, ok = {}, set(), set(), True
        for arg in args:
            if not isinstance(arg, ast.KwArg):
                self.error(f"{head}(...) takes named parameters", getattr(arg, "span", None),
                           f"write name = value; {head} takes {one_of(params)}" if params else f"{head} takes no parameters")
                ok = False
                continue
            name = arg.name.name
            if name not in params:
                hint = did_you_mean(name, params)
                if hint:
                    guessed.add(hint.split("'")[1])
                self.error(f"{head} has no parameter '{name}'", arg.name.span,
                           hint or (f"it takes {one_of(params)}" if params else "it takes none"))
                ok = False
                continue
            if name in given:
                self.error(f"parameter '{name}' given twice", arg.name.span)
                ok = False
                continue
            given.add(name)
            v = self.scalar(arg.value, params[name], name, scope)
            if v is None:
                ok = False
                continue
            out[name] = v
        for name, p in params.items():
            if name in given:
                continue
            if p.required:
                if name not in guessed:  # a misspelling of it was reported already
                    self.error(f"{head}(...) needs '{name}'", head_span, f"add {name} = ...")
                ok = False
            elif p.default is not None:
                out[name] = ir.XConst(p.default) if p.kind in ("num", "int") else p.default
        return (head, out) if ok else None

    # per-sample expressions -----------------------------------------------------------------
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


# --- entry points --------------------------------------------------------------------------


def normalize_overrides(overrides) -> list[tuple[str, str]]:
    """Accept ``{"attack.steps": 10}`` (Python API) or ``["attack.steps=10"]`` (CLI)."""
    if not overrides:
        return []
    if isinstance(overrides, dict):
        out = []
        for k, value in overrides.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str) and not _parses_as_expr(value) and '"' not in value and "\n" not in value:
                text = f'"{value}"'  # a plain string such as "mypkg.nets:make"
            else:
                text = str(value)
            out.append((str(k), text))
        return out
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise SpecError([Diagnostic(f"override '{item}' has no '='", None, "write --set key=value, e.g. attack.steps=20")])
        out.append((key.strip(), value.strip()))
    return out


def _parses_as_expr(v: str) -> bool:
    try:
        parse_expr(v)
    except SpecError:
        return False
    return True


def check_attacks(text: str, file: str = "--attacks") -> tuple[ir.EvalAttack, ...]:
    """Check an evaluation list written as in an ``evaluate`` block, e.g. ``natural pgd(steps = 20)``."""
    from .program import evaluation_list

    report = Reporter()
    report.sources.texts[file] = text
    items = parse_eval_list(text, file)
    if not items:
        report.error("no attacks given", Span(file, 1, 1, 1, 2), "e.g. --attacks 'natural pgd(steps = 20) autoattack'")
    attacks = evaluation_list(Checker(report), items)
    report.fail_if_errors()
    return attacks


def check_file(path, overrides=None, *, spec_path: list[str] | None = None,
               files: dict[str, str] | None = None) -> ir.Program:
    """Parse, resolve ``extends``, apply overrides and check; raises ``SpecError`` on any problem.

    ``files``: spec texts by path that stand in for the disk (a run folder's recorded specs).
    """
    from .resolve import Resolver

    report = Reporter()
    resolver = Resolver(report, spec_path, files)
    spec = resolver.load(Path(path))
    if spec is None:
        report.fail_if_errors()
    return _check(resolver, spec, overrides)


def check_text(text: str, file: str = "<spec>", overrides=None, *, spec_path: list[str] | None = None) -> ir.Program:
    from .resolve import Resolver

    report = Reporter()
    resolver = Resolver(report, spec_path)
    resolver.add(parse_text(text, file))
    return _check(resolver, resolver.specs[file], overrides)


def _check(resolver, spec: ast.Spec, overrides) -> ir.Program:
    from .program import build

    report = resolver.report
    pairs = normalize_overrides(overrides)
    merged = resolver.resolve(spec)
    report.fail_if_errors()  # an unresolved parent would only cascade into bogus errors
    resolver.apply_overrides(merged, pairs)
    digest = hashlib.sha256()
    for file, _ in merged.files:
        digest.update(report.sources.texts.get(file, "").encode())
    for k, v in pairs:
        digest.update(f"\0{k}={v}".encode())
    program = build(merged, report, pairs, digest.hexdigest())
    report.fail_if_errors()
    assert program is not None
    return program
