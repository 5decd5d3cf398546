"""Stage 2b: the checker of values -- numbers, schedules, choices, clause heads, expressions.

``Checker`` turns the syntax of one value into its IR (``ir.X`` for numbers, ``ir.E`` for
per-sample expressions) or reports why it cannot, never stopping at the first problem; the
schedules are checked in ``compiler/schedules.py`` and the per-sample expressions in
``compiler/expressions.py``, both mixed into ``Checker``. Which
clauses exist and what they mean is in ``compiler/vocabulary``; resolving ``extends`` and
``--set`` is ``compiler/resolve.py``; building and settling the whole program (references
between settings, ranges over the run, warnings) is ``compiler/program.py``.

The entry points ``check_file``, ``check_text`` and ``check_attacks`` run all of it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from . import ast, ir
from .diagnostics import Diagnostic, Reporter, Span, SpecError, did_you_mean, one_of
from .expressions import ExpressionChecks
from .parse import parse_eval_list, parse_expr, parse_text
from .schedules import SCHEDULES, ScheduleChecks
from .vocabulary import Param, fmt_num
from .vocabulary.quantities import FUNCTIONS


def show(v) -> str:
    """A number for a message, short whatever its size."""
    if isinstance(v, int) and abs(v) >= 10**15:
        return f"{float(v):.3g}"
    if isinstance(v, float) and (math.isinf(v) or abs(v) >= 1e15):
        return f"{v:.3g}"
    return fmt_num(v)


class Checker(ScheduleChecks, ExpressionChecks):
    """Checks single values against the vocabulary; collects diagnostics in ``report``.

    Schedules (:mod:`.schedules`) and per-sample expressions (:mod:`.expressions`) are checked
    by the mixins, which report through :meth:`error` and read constants through :meth:`const`."""

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
