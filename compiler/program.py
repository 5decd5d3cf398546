"""Stage 2c: merged clauses -> ``ir.Program``: every clause checked, every number settled.

``build`` checks each clause against the vocabulary (through ``check.Checker``) and collects its
numbers as settings; ``settle`` then resolves the references between settings (``step_size =
eps / 4``), rejects cycles (showing every setting involved), folds what is constant, and checks
every value over the whole run, epoch by epoch (``'step_size' must be > 0 where eps is, got 0 at
epoch 0``). Last come the warnings: settings that never take effect (a schedule piece after the
last epoch), weights that are constant, an evaluation at another ε than training's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from . import ast, ir
from .check import Checker, show
from .diagnostics import Reporter, Span, did_you_mean, one_of, render_one
from .expressions import PROGRESS_HINT, PROGRESS_NEEDS_TRAIN, Scope, builtin_names
from .fmt import expr as expr_text
from .identity import etext
from .resolve import Resolved
from .vocabulary import Param, fixed
from .vocabulary.clauses import (
    GUARDS,
    HEADS,
    OBJECTIVE_CLAUSES,
    OPTIMIZERS,
    PER_STEP,
    TRAIN_CLAUSES,
    TRAIN_REQUIRED,
    TRAIN_VALUES,
    WEIGHT_SPECIAL,
)
from .vocabulary.datasets import DATASETS
from .vocabulary.evaluation import ATTACKS, DEFAULT_EVALUATE, label
from .vocabulary.models import MODELS
from .vocabulary.quantities import SCALARS

# every numeric setting a spec can hold, by the name other numbers use for it
SETTING_KEYS: dict[str, str] = {}
for _section, _heads in HEADS.items():
    if _section == "perturb":  # AWP's numbers are its own (its lr is not the learning rate)
        continue
    for _params in _heads.values():
        for _name, _p in _params.items():
            if _p.kind in ("num", "int"):
                SETTING_KEYS.setdefault(_name, f"{_section}.{_name}")
for _params in OPTIMIZERS.values():
    for _name, _p in _params.items():
        if _p.kind in ("num", "int"):
            SETTING_KEYS.setdefault(_name, f"train.{_name}")
for _name, _p in TRAIN_VALUES.items():
    if _p.kind in ("num", "int"):
        SETTING_KEYS.setdefault(_name, f"train.{_name}")

MAX_CHECKED_EPOCHS = 2000  # beyond this, ranges are checked at the schedules' points and a grid


@dataclass
class _Pending:
    """A setting as written, before settling: its expression, parameter and where it stands."""

    key: str
    name: str
    x: ir.X
    param: Param
    span: Span | None
    origin: ir.Origin | None
    text: str


class Builder:
    def __init__(self, report: Reporter):
        self.report = report
        self.check = Checker(report, dict(SETTING_KEYS))
        self.pending: dict[str, _Pending] = {}
        self.settled: dict[str, ir.Setting] = {}
        self.has_train = True  # False for an objective alone: no epochs, so no `progress`

    def error(self, message: str, span, hint: str | None = None) -> None:
        self.report.error(message, span, hint)

    def origin(self, clause: ast.Clause | None) -> ir.Origin | None:
        if clause is None or clause.span is None:
            return None
        line = self.report.sources.line(clause.span.file, clause.span.line) or ""
        return ir.Origin(clause.span.file, clause.span.line, line)

    # settings ------------------------------------------------------------------------
    def add(self, key: str, name: str, x: ir.X | None, param: Param, value_ast, origin) -> str | None:
        """Register a number for settling; returns its key (None when it did not check)."""
        if x is None:
            return None
        span = getattr(value_ast, "span", None)
        if isinstance(x, ir.XConst):  # a plain number: checked now, with every other problem of the spec
            value = self.check.in_range(x.value, span, param, name)
            if value is None:
                return None
            x = ir.XConst(value)
        text = expr_text(value_ast) if value_ast is not None and not isinstance(value_ast, str) else str(param.default)
        self.pending[key] = _Pending(key, name, x, param, span, origin, text)
        return key

    def args(self, section: str, clause: ast.Clause, got: dict, table: dict[str, Param], value) -> dict:
        """Register the numeric parameters of a clause head as settings ``section.name``."""
        spans = {a.name.name: a.value for a in getattr(value, "args", ()) if isinstance(a, ast.KwArg)}
        out = {}
        for name, v in got.items():
            if isinstance(v, (ir.XConst, ir.XRef, ir.XVar, ir.XSched, ir.XBin, ir.XNeg, ir.XFunc)):
                out[name] = self.add(f"{section}.{name}", name, v, table[name], spans.get(name), self.origin(clause))
            else:
                out[name] = v
        return out

    def bindings(self, clause: ast.Clause, section: str, special: dict[str, Param]):
        """``where name = value, ...``: plain bindings become settings ``section.name``.

        Returns ({name: key}, {special name: value}, ok). A bad binding is reported but its name
        stays known, so the expression is still checked and every problem reported at once.
        """
        plain, extra, ok, seen = {}, {}, True, set()
        builtin = builtin_names()
        scope = {b.name.name: f"{section}.{b.name.name}" for b in clause.where if b.name.name not in special}
        for b in clause.where:
            name = b.name.name
            if name in seen:
                self.error(f"'{name}' is bound twice", b.name.span)
                ok = False
                continue
            seen.add(name)
            if not self.check.binding_name(b, set(special), builtin):
                ok = False
                continue
            if name in SETTING_KEYS and name not in special:
                self.report.warn("shadowed-binding", f"the binding '{name}' hides the setting of that name in this "
                                 "clause", b.name.span, "rename the binding to use both")
            if name in special:
                v = self.check.scalar(b.value, special[name], name, scope)
                if v is None:
                    ok = False
                elif special[name].kind in ("num", "int"):
                    extra[name] = self.add(f"{section}.{name}", name, v, special[name], b.value, self.origin(clause))
                else:
                    extra[name] = v
                continue
            v = self.check.number(b.value, Param("num", allow_inf=True), name, scope)
            plain[name] = self.add(f"{section}.{name}", name, v, Param("num", allow_inf=True), b.value,
                                   self.origin(clause))
            ok = ok and v is not None
        return plain, extra, ok

    def unused(self, e: ir.E | None, plain: dict, clause: ast.Clause) -> bool:
        used = ir.variables(e) if e is not None else set(plain)
        spans = {b.name.name: b.name.span for b in clause.where}
        ok = True
        for name in plain:
            if name not in used:
                self.error(f"'{name}' is bound but the expression never uses it", spans.get(name),
                           did_you_mean(name, used) or "remove it, or use it in the expression")
                ok = False
        return ok

    def scope(self, where: str, bindings: dict, **kw) -> Scope:
        """Names of a weight/loss/stop expression: settings present, K, epoch, progress, bindings.

        ``steps`` there is each sample's step count (a per-sample quantity); the attack's is ``K``.
        """
        scalars = {n for n, k in SETTING_KEYS.items() if k in self.pending} | set(SCALARS)
        return Scope(where, set(bindings), scalars - {"steps"}, progress=self.has_train, **kw)


# --- the sections ---------------------------------------------------------------------------


def _threat(b: Builder, clause):
    if clause is None:
        return None
    got = b.check.head_args(clause.value, HEADS["threat"], "threat model", "threat")
    if got is None:
        return None
    norm, a = got
    b.args("threat", clause, a, HEADS["threat"][norm], clause.value)
    return norm


def _attack(b: Builder, clause):
    if clause is None:
        return None
    got = b.check.head_args(clause.value, HEADS["attack"], "attack", "attack")
    if got is None:
        return None
    head, a = got
    return b.args("attack", clause, a, HEADS["attack"][head], clause.value)


def _form(b: Builder, clause):
    """(kind, {param: key or value}, stop ast, plain bindings)."""
    if clause is None:
        return "minmax", {}, None, {}
    got = b.check.head_args(clause.value, HEADS["form"], "form", "form")
    if got is None:
        return None
    head, a = got
    plain, _, ok = b.bindings(clause, "form", {})
    if clause.where and head != "minmin":
        b.error(f"form {head} takes no 'where' bindings", clause.where[0].span, "bindings belong to a stop rule")
        return None
    args = b.args("form", clause, a, HEADS["form"][head], clause.value)
    return (head, args, a.get("stop"), plain) if ok else None


def _perturb(b: Builder, clause):
    """``perturb weights(gamma = ..., steps = ..., lr = ..., from_epoch = ...)`` (AWP): its settings' keys."""
    if clause is None:
        return "absent"
    if clause.where:
        b.error("'perturb' takes no 'where' bindings", clause.where[0].span, "pass parameters inside the parentheses")
        return None
    got = b.check.head_args(clause.value, HEADS["perturb"], "perturbation", "perturb")
    if got is None:
        return None
    return b.args("perturb", clause, got[1], HEADS["perturb"][got[0]], clause.value)


def _guard(b: Builder, clause):
    """``guard collapse(steps = 5, step_size = eps / 4, drop = 0.2)`` in the train block: its settings' keys."""
    if clause is None:
        return None
    got = b.check.head_args(clause.value, GUARDS, "guard", "guard")
    if got is None:
        return "bad"
    return b.args("guard", clause, got[1], GUARDS[got[0]], clause.value)


def _free_rules(b: Builder, c: dict, norm: str, attack: dict) -> bool:
    """What Free AT's replay needs of the other clauses (one step per replay from a kept perturbation)."""
    clause = c["form"]
    span = getattr(clause.value, "span", None)
    ok = True
    weight = c.get("weight")
    if weight is not None and not (isinstance(weight.value, ast.Name) and weight.value.id == "none"):
        b.error("form free replays one step per batch and computes no kappa to weigh by", weight.key.span,
                "use weight none with form free")
        ok = False
    if norm != "linf":
        b.error("form free replays an L-inf perturbation, as its official code", span, "use threat linf(...)")
        ok = False
    steps = b.pending.get(attack["steps"]) if attack else None
    if steps is not None and not (isinstance(steps.x, ir.XConst) and steps.x.value == 1):
        b.error("form free takes one ascent step per replay", steps.span or span, "set attack pgd(steps = 1, ...)")
        ok = False
    loss = c.get("loss")
    if loss is not None and not any(isinstance(n, ast.Call) and any(isinstance(a, ast.Name) and a.id == "adv"
                                                                    for a in n.args) for n in _ast_walk(loss.value)):
        b.error("form free trains on its perturbed point: the loss needs a term of adv", loss.key.span,
                "e.g. loss ce(adv)")
        ok = False
    if attack and attack.get("init") != "none":
        b.error("form free keeps one perturbation per batch position, starting at 0", span,
                "set attack pgd(..., init = none)")
        ok = False
    return ok


def _ast_walk(node):
    """Every node of a syntax tree (expressions)."""
    yield node
    for child in ("left", "right", "operand", "value", "key"):
        if hasattr(node, child) and not isinstance(getattr(node, child), (str, int, float)):
            yield from _ast_walk(getattr(node, child))
    for a in getattr(node, "args", ()):
        yield from _ast_walk(a)


def _stop(b: Builder, stop_ast, plain: dict, clause) -> ir.E | None:
    e = b.check.expression(stop_ast, b.scope("stop", plain))
    if e is not None and _kind(e) != "bool":
        b.error("the stop rule must be a condition", getattr(stop_ast, "span", None), "e.g. stop = margin > 0")
        return None
    if e is None or not _types_ok(b, e, stop_ast) or not b.unused(e, plain, clause):
        return None
    return e


def _weight(b: Builder, clause):
    """(kind, fn, lam key, from_epoch, normalise, expr, bindings) or None."""
    if clause is None:
        return "none", None, None, 0, "mean", None, {}
    value = clause.value
    head = value.func.name if isinstance(value, ast.Call) else value.id if isinstance(value, ast.Name) else None
    if head in HEADS["weight"]:
        if clause.where:
            b.error(f"weight {head}(...) takes no 'where' bindings", clause.where[0].span,
                    "pass parameters inside the parentheses")
            return None
        got = b.check.head_args(value, HEADS["weight"], "weighting", "weight")
        if got is None:
            return None
        head, a = got
        if head == "none":
            return "none", None, None, 0, "mean", None, {}
        a = b.args("weight", clause, a, HEADS["weight"][head], value)
        return "gair", a["fn"], a["lambda"], a["from_epoch"], a["normalise"], None, {}
    plain, extra, ok = b.bindings(clause, "weight", WEIGHT_SPECIAL)
    e = b.check.expression(value, b.scope("weight", plain, extra={"lambda"}))
    if e is not None and _kind(e) != "number":
        b.error("a weight is a number, not a condition", getattr(value, "span", None))
        return None
    if e is None or not b.unused(e, plain, clause) or not ok or not _types_ok(b, e, value):
        return None
    if isinstance(e, ir.EConst) and e.value == 0:
        b.error("weight 0 makes every sample weigh nothing", getattr(value, "span", None),
                "use weight none for no weighting")
        return None
    lam = extra.get("lambda")
    if lam is None and "lambda" in ir.variables(e):  # GAIRAT's shift, 0 unless bound
        lam = b.add("weight.lambda", "lambda", ir.XConst(0), WEIGHT_SPECIAL["lambda"], None, None)
    from_epoch = extra.get("from_epoch")
    return "expr", None, lam, from_epoch, extra.get("normalise", "mean"), e, plain


def _loss(b: Builder, clause, weighted: bool):
    if clause is None:
        return None
    plain, _, ok = b.bindings(clause, "loss", {})
    scope = b.scope("loss", plain, terms=True, quantities={"kappa", "steps"}, extra={"weight"})
    e = b.check.expression(clause.value, scope)
    if e is None or not b.unused(e, plain, clause) or not ok or not _types_ok(b, e, clause.value):
        return None
    if _kind(e) != "number":
        b.error("a loss is a number, not a condition", getattr(clause.value, "span", None))
        return None
    if not any(isinstance(n, ir.ETerm) for n in ir.walk(e)):
        b.error("the loss uses no loss term", getattr(clause.value, "span", None),
                "use ce(adv), ce(nat), kl(nat, adv), bce(adv) or prob(...)")
        return None
    if weighted and "weight" not in ir.variables(e):
        b.error("the objective defines a weight but the loss does not use it", clause.key.span,
                "multiply a term by weight, e.g. loss ce(adv) * weight")
        return None
    return e, plain


def _named(b: Builder, clause, entries: dict, what: str):
    """``data digits`` / ``data digits(test = 0.25)`` / ``model wrn(depth = 28)``: (name, args)."""
    if clause is None:
        return None
    value = clause.value
    table = {name: entry.params for name, entry in entries.items()}
    if isinstance(value, (ast.Name, ast.Call)):
        name = value.id if isinstance(value, ast.Name) else value.func.name
        if name in table or isinstance(value, ast.Call):
            got = b.check.head_args(value, table, what, clause.key.name)
            if got is None:
                return None
            args = {k: _const_arg(b, v, k, table[got[0]][k], value) for k, v in got[1].items()}
            if any(v is None for v in args.values()):
                return None
            return got[0], tuple(sorted(args.items()))
        b.error(f"unknown {what} '{name}'", value.span, did_you_mean(name, table) or f"one of {one_of(table)}")
        return None
    b.error(f"expected a {what} name", getattr(value, "span", None), f"one of {one_of(table)}")
    return None


def _const_arg(b: Builder, v, name: str, param: Param, head):
    """A fixed parameter's plain value (numbers folded; no references to settings)."""
    if not isinstance(v, (ir.XConst, ir.XRef, ir.XVar, ir.XSched, ir.XBin, ir.XNeg, ir.XFunc)):
        return v
    span = next((a.value.span for a in getattr(head, "args", ()) if isinstance(a, ast.KwArg) and a.name.name == name),
                getattr(head, "span", None))
    if not isinstance(v, ir.XConst):
        b.error(f"'{name}' must be a plain number here", span)
        return None
    return b.check.in_range(v.value, span, param, name)


def _model(b: Builder, clause):
    if clause is None:
        return None
    value = clause.value
    if isinstance(value, ast.Str):
        import re

        module, sep, attr = value.value.partition(":")
        ident = r"[A-Za-z_][A-Za-z0-9_]*"
        if not sep or not re.fullmatch(rf"{ident}(\.{ident})*", module) or not re.fullmatch(rf"{ident}(\.{ident})*", attr):
            b.error(f"'{value.value}' is not a model name or 'package.module:callable'", value.span,
                    f"built-in models: {one_of(MODELS)}")
            return None
        return value.value, ()
    return _named(b, clause, MODELS, "model")


def _train(b: Builder, merged: Resolved):
    """The train block's values, or ``None`` when the spec has none (or it did not check)."""
    t = merged.train
    if not t:
        return "absent"
    ok = True
    for key, clause in t.items():
        if key not in TRAIN_CLAUSES:
            b.error(f"unknown train setting '{key}'", clause.key.span,
                    did_you_mean(key, TRAIN_CLAUSES) or f"one of {one_of(TRAIN_CLAUSES)}")
            ok = False
        elif clause.where:
            b.error(f"'{key}' takes no 'where' bindings", clause.where[0].span)
            ok = False
    missing = [key for key in TRAIN_REQUIRED if key not in t]
    if missing:
        where = merged.name.span
        block = merged.train_block
        if block is not None and block.span is not None:
            where = Span(block.span.file, block.span.line, block.span.col, block.span.line, block.span.col + 5)
        for key in missing:
            b.error(f"the train block has no '{key}'", where, f"add: {TRAIN_REQUIRED[key]}")
        ok = False
    data = _named(b, t.get("data"), DATASETS, "data set")
    model = _model(b, t.get("model"))
    values = {}
    for key, param in TRAIN_VALUES.items():
        clause = t.get(key)
        if clause is None:
            values[key] = param.default
            continue
        v = b.check.scalar(clause.value, param, key)
        if isinstance(v, (ir.XConst, ir.XRef, ir.XVar, ir.XSched, ir.XBin, ir.XNeg, ir.XFunc)):
            v = b.add(f"train.{key}", key, v, param, clause.value, b.origin(clause))
        values[key] = v
        ok = ok and v is not None
    guard = _guard(b, t.get("guard"))
    optim = None
    if t.get("optim") is not None:
        got = b.check.head_args(t["optim"].value, OPTIMIZERS, "optimizer", "optim")
        if got is not None:
            head, a = got
            a = b.args("train", t["optim"], a, OPTIMIZERS[head], t["optim"].value)
            optim = head, a
    if None in (data, model, optim) or guard == "bad" or not ok:
        return None
    return data, model, values, optim, guard


def evaluation_list(check: Checker, items) -> tuple[ir.EvalAttack, ...] | None:
    """The attacks of an evaluate block (or ``--attacks``), every parameter filled in."""
    table = {name: entry.params for name, entry in ATTACKS.items()}
    out, ok, seen = [], True, {}
    for item in items:
        got = check.head_args(item, table, "evaluation attack", "evaluate")
        if got is None:
            ok = False
            continue
        name, a = got
        params, good = {}, True
        for k, given in a.items():
            value = given
            if isinstance(given, ir.XConst):
                span = next((x.value.span for x in getattr(item, "args", ()) if isinstance(x, ast.KwArg)
                             and x.name.name == k), None)
                value = check.in_range(given.value, span, table[name][k], k)
                good = good and value is not None
            elif not isinstance(given, (str, bool)):
                check.error(f"'{k}' of an evaluation attack must be a plain number", getattr(item, "span", None))
                good = False
            params[k] = value
        if not good:
            ok = False
            continue
        params = {k: params.get(k) for k in table[name]}  # every parameter, None where unset
        attack = ir.EvalAttack(name, tuple(sorted(params.items())), label(name, params))
        if attack.label in seen:
            check.error(f"two evaluation attacks share the column '{attack.label}'", getattr(item, "span", None),
                        "give one of them another eps, steps or restarts")
            ok = False
            continue
        seen[attack.label] = item
        out.append(attack)
    return tuple(out) if ok else None


# --- settling the numbers -----------------------------------------------------------------------


def settle(b: Builder, epochs: int | None) -> bool:
    """Resolve references, reject cycles, fold constants, check every value over the run."""
    if not _known_refs(b, epochs):
        return False
    order = _dependency_order(b)
    if order is None:
        return False
    shapes = _time_shapes(b, order)
    if shapes is None:
        return False
    varies, per_step = shapes
    pending, ok = b.pending, True
    values = _Values(pending, epochs)
    for key in order:
        p = pending[key]
        const = None if varies[key] else values.at(key, 0)
        if const is None and not varies[key]:
            ok = False
            continue
        extremes = _ranges(b, p, values, epochs, varies[key], per_step[key])
        if extremes is None:
            ok = False
            continue
        if const is not None and p.param.kind == "int":
            const = int(const)
        b.settled[key] = ir.Setting(key, p.name, p.x, p.param.kind == "int", p.origin, const, per_step[key], p.text,
                                    *extremes)
    return ok and _cross_checks(b, values, epochs)


def _known_refs(b: Builder, epochs: int | None) -> bool:
    """Every setting a value refers to exists; ``progress`` only with a train block."""
    ok = True
    for p in b.pending.values():
        for node in ir.xwalk(p.x):
            if isinstance(node, ir.XRef) and node.key not in b.pending:
                b.error(f"'{node.name}' is not set in this spec", p.span,
                        f"'{p.name}' refers to it; set it, or write the number")
                ok = False
            if isinstance(node, ir.XVar) and node.name == "progress" and epochs is None:
                b.error(PROGRESS_NEEDS_TRAIN, p.span, PROGRESS_HINT)
                ok = False
    return ok


def _dependency_order(b: Builder) -> list[str] | None:
    """The settings, each after those it refers to (depth first); None when some refer to
    each other, with every setting on a cycle reported once."""
    pending = b.pending
    ok = True
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(key: str, path: list[str]) -> None:
        nonlocal ok
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            cycle = path[path.index(key):] + [key]
            text = " -> ".join(pending[k].name for k in cycle)
            for k in cycle[:-1]:
                b.error(f"settings refer to each other: {text}", pending[k].span, "one of them must be a number")
            ok = False
            return
        state[key] = 1
        for node in ir.xwalk(pending[key].x):
            if isinstance(node, ir.XRef):
                visit(node.key, [*path, key])
        state[key] = 2
        order.append(key)

    for key in pending:
        visit(key, [])
    return order if ok else None


def _time_shapes(b: Builder, order: list[str]) -> tuple[dict[str, bool], dict[str, bool]] | None:
    """Which settings vary over the run and which change at every step (through their own
    schedule or one they refer to), or None when a setting changes where it cannot."""
    pending, ok = b.pending, True
    varies: dict[str, bool] = {}
    per_step: dict[str, bool] = {}
    for key in order:  # dependencies first
        p = pending[key]
        nodes = list(ir.xwalk(p.x))
        varies[key] = any(isinstance(n, (ir.XVar, ir.XSched)) or (isinstance(n, ir.XRef) and varies[n.key])
                          for n in nodes)
        per_step[key] = any((isinstance(n, ir.XSched) and n.every == "step")
                            or (isinstance(n, ir.XRef) and per_step[n.key]) for n in nodes)
        inline = [n for n in nodes if isinstance(n, ir.XSched) and n.every == "step" and n is not p.x]
        if inline:
            b.error("a per-step schedule is a whole value, not part of an expression", p.span,
                    f"give '{p.name}' the schedule alone, or refer to a setting that follows it")
            ok = False
        elif per_step[key] and key not in PER_STEP:
            lr_ref = any(isinstance(n, ir.XRef) and per_step[n.key] for n in nodes)
            b.error("only the learning rate and momentum can change at every step" if not lr_ref
                    else f"'{p.name}' uses the learning rate, which changes at every step", p.span,
                    "give this setting an epoch schedule" if not lr_ref else "write the number")
            ok = False
        elif per_step[key] and key == "train.lr" and not isinstance(p.x, ir.XSched):
            # the generated lr_at(epoch, step, steps_per_epoch) is the schedule's own formula (a
            # momentum may still follow it: momentum = 0.9 - 0.5 * lr is computed from lr_at's value)
            b.error("a per-step schedule must be the whole learning rate, not part of an expression", p.span,
                    "put the numbers inside it, e.g. lr = onecycle(max = 0.2)")
            ok = False
        if varies[key] and not p.param.varies:
            b.error(f"'{p.name}' is one value for the whole run; it cannot follow a schedule or the epoch", p.span)
            ok = False
    return (varies, per_step) if ok else None


class _Values:
    """Every setting's value at an epoch, by the same formulas the generated code prints."""

    def __init__(self, pending: dict[str, _Pending], epochs: int | None):
        self.pending, self.epochs = pending, epochs
        self.memo: dict[tuple[str, float], float | None] = {}

    def at(self, key: str, epoch: float):
        k = (key, epoch)
        if k not in self.memo:
            self.memo[k] = self.x(self.pending[key].x, epoch)
        return self.memo[k]

    def x(self, x: ir.X, epoch: float):
        try:
            if isinstance(x, ir.XConst):
                return x.value
            if isinstance(x, ir.XRef):
                return self.at(x.key, epoch)
            if isinstance(x, ir.XVar):
                return epoch if x.name == "epoch" else epoch / self.epochs
            if isinstance(x, ir.XSched):
                if x.kind in ("onecycle", "cyclic"):
                    o = dict(x.options)
                    return o["max"] if x.kind == "onecycle" else o["min"]
                return ir.sched_at(x, epoch)
            if isinstance(x, ir.XNeg):
                return -self.x(x.operand, epoch)
            if isinstance(x, ir.XBin):
                a, b = self.x(x.left, epoch), self.x(x.right, epoch)
                return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
                        "^": lambda: float(a) ** float(b)}[x.op]()
            args = [self.x(a, epoch) for a in x.args]
            return _SCALAR_MATH[x.fn](*args)
        except (ZeroDivisionError, OverflowError, ValueError):
            return math.nan

    def epochs_to_check(self) -> list[int]:
        if self.epochs is None:
            last = max((e for p in self.pending.values() for n in ir.xwalk(p.x) if isinstance(n, ir.XSched)
                        for e, _ in n.points), default=0)
            return list(range(last + 2))
        if self.epochs <= MAX_CHECKED_EPOCHS:
            return list(range(self.epochs))
        marks = {0, self.epochs - 1}
        for p in self.pending.values():
            for n in ir.xwalk(p.x):
                if isinstance(n, ir.XSched):
                    marks |= {e + d for e, _ in n.points for d in (-1, 0, 1) if 0 <= e + d < self.epochs}
        step = self.epochs / MAX_CHECKED_EPOCHS
        marks |= {int(i * step) for i in range(MAX_CHECKED_EPOCHS)}
        return sorted(marks)


def value_at(program: ir.Program, key: str, epoch: float):
    """A setting's value at an epoch, by the formulas the generated code prints."""
    pending = {s.key: _Pending(s.key, s.name, s.value, FIXED_NUM, None, s.origin, s.text) for s in program.settings}
    return _Values(pending, program.train.epochs if program.train is not None else None).at(key, epoch)


_SCALAR_MATH = {
    "tanh": math.tanh, "exp": math.exp, "log": math.log, "sqrt": math.sqrt, "abs": abs, "floor": math.floor,
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)), "min": min, "max": max, "clamp": lambda v, lo, hi: min(max(v, lo), hi),
}  # fmt: skip


def _ranges(b: Builder, p: _Pending, values: _Values, epochs: int | None, varies: bool, per_step: bool):
    """Check the setting at every epoch of the run (and, per step, over its schedule's range);
    returns its (lowest, highest) value, or None after reporting a problem."""
    checks = values.epochs_to_check() if varies else [0]
    sched = next((n for n in ir.xwalk(p.x) if isinstance(n, ir.XSched) and n.every == "step"), None)
    if per_step and sched is not None:
        o = dict(sched.options)
        extremes = ([o["max"] / o["div"] / o["final_div"], o["max"]] if sched.kind == "onecycle"
                    else [o["min"], o["max"]] if sched.kind == "cyclic" else [v for _, v in sched.points])
        if p.x is sched:  # the rate is the schedule itself: its extremes are its range
            # it may touch the bound at a step (a warm-up from 0, the end of a cycle), not stay there
            touch = p.param.touching() if sched.kind != "piecewise" else p.param
            for v in extremes:
                if v is not None and touch.violated(v):
                    b.error(f"'{p.name}' must be {touch.range_text()}, got {show(v)} during the run", p.span)
                    return None
            if p.param.violated(max(extremes)):
                b.error(f"'{p.name}' must be {p.param.range_text()} at some step, got {show(max(extremes))} "
                        "at every step", p.span)
                return None
            return min(extremes), max(extremes)
    seen = []
    for epoch in checks:
        v = values.at(p.key, epoch)
        at = f" at epoch {epoch}" if varies else ""
        if v is None or (isinstance(v, float) and math.isnan(v)):
            b.error(f"'{p.name}' has no finite value{at}", p.span, "check for a division by zero or a log of 0")
            return None
        if isinstance(v, float) and math.isinf(v) and not p.param.allow_inf:
            b.error(f"'{p.name}' is infinite{at}", p.span)
            return None
        if b.check.in_range(v, p.span, p.param, p.name, at) is None:
            return None
        seen.append(v)
    return min(seen), max(seen)


def _cross_checks(b: Builder, values: _Values, epochs: int | None) -> bool:
    """Rules between settings: a learning rate and a radius > 0 somewhere, a step wherever the radius is."""
    lr = b.pending.get("train.lr")
    if lr is not None and isinstance(lr.x, ir.XConst) and lr.x.value == 0:
        b.error("'lr' must be > 0, got 0", lr.span)
        return False
    if "threat.eps" not in b.pending:
        return True
    eps = b.pending["threat.eps"]
    checks = values.epochs_to_check()
    eps_values = [values.at("threat.eps", e) for e in checks]
    if all(v == 0 for v in eps_values):
        shown = "0" if isinstance(eps.x, ir.XConst) else "0 at every epoch"
        b.error(f"'eps' must be > 0, got {shown}", eps.span)
        return False
    step = b.pending.get("attack.step_size")
    if step is not None:
        for e, ev in zip(checks, eps_values, strict=True):
            sv = values.at(step.key, e)
            if sv == 0 and ev > 0:
                if isinstance(step.x, ir.XConst):
                    b.error("'step_size' must be > 0, got 0", step.span)
                else:
                    b.error(f"'step_size' must be > 0 where eps is, got 0 at epoch {e} (eps {show(ev)})", step.span)
                return False
    return True


# --- types of per-sample expressions -------------------------------------------------------------


def _kind(e: ir.E) -> str:
    return "bool" if isinstance(e, (ir.ECmp, ir.EBool, ir.ENot)) else "number"


def _types_ok(b: Builder, e: ir.E, node) -> bool:
    """Conditions join with and/or/not; numbers with arithmetic and comparisons -- never mixed."""
    for n in ir.walk(e):
        if isinstance(n, (ir.EBool, ir.ENot)):
            parts = [n.left, n.right] if isinstance(n, ir.EBool) else [n.operand]
            if any(_kind(x) != "bool" for x in parts):
                what = f"'{n.op}' joins" if isinstance(n, ir.EBool) else "'not' negates"
                b.error(f"{what} conditions, not numbers", getattr(node, "span", None),
                        "compare the number first, e.g. margin > 0")
                return False
        elif isinstance(n, (ir.EBin, ir.ECmp, ir.EFunc, ir.ENeg)):
            parts = [n.left, n.right] if isinstance(n, (ir.EBin, ir.ECmp)) else (
                list(n.args) if isinstance(n, ir.EFunc) else [n.operand])
            if any(_kind(x) != "number" for x in parts):
                b.error("a condition cannot be used as a number", getattr(node, "span", None),
                        "conditions only join with and, or, not")
                return False
    return True


def weight_sign(e: ir.E, ranges: dict[str, tuple[float, float]]) -> str:
    """What interval arithmetic proves about a weight: positive | nonnegative | unknown | never."""
    lo, hi = _interval(e, ranges)
    if lo > 0:
        return "positive"
    if hi <= 0:
        return "never"
    return "nonnegative" if lo >= 0 else "unknown"


_QTY_RANGE = {"kappa": (0, None), "steps": (0, None), "margin": (-math.inf, math.inf), "loss": (0, math.inf),
              "prob": (0, 1), "max_wrong_prob": (0, 1), "pm": (-1, 1), "grad_norm": (0, math.inf),
              "fosc": (0, math.inf)}  # fmt: skip


def _interval(e: ir.E, ranges) -> tuple[float, float]:
    full = (-math.inf, math.inf)
    if isinstance(e, ir.EConst):
        return float(e.value), float(e.value)
    if isinstance(e, ir.EVar):
        return ranges.get(e.name, full)
    if isinstance(e, ir.EQty):
        lo, hi = _QTY_RANGE.get(e.name, full)
        return lo, ranges["K"][1] if hi is None else hi
    if isinstance(e, ir.ENeg):
        lo, hi = _interval(e.operand, ranges)
        return -hi, -lo
    if isinstance(e, ir.EBin):
        (a, b_), (c, d) = _interval(e.left, ranges), _interval(e.right, ranges)
        with_nan = []
        if e.op == "+":
            return a + c, b_ + d
        if e.op == "-":
            return a - d, b_ - c
        if e.op == "*":
            with_nan = [a * c, a * d, b_ * c, b_ * d]
        elif e.op == "/" and (c > 0 or d < 0):
            with_nan = [a / c, a / d, b_ / c, b_ / d] if all(math.isfinite(v) for v in (c, d)) else []
            if not with_nan:
                return (0.0, math.inf) if a >= 0 and c > 0 else full
        else:
            return full
        if any(math.isnan(v) for v in with_nan):
            return full
        return min(with_nan), max(with_nan)
    if isinstance(e, ir.EFunc):
        args = [_interval(a, ranges) for a in e.args]
        (a, b_) = args[0]
        if e.fn in ("exp",):
            return (0.0 if a == -math.inf else math.exp(min(a, 700)) or 0.0), math.inf
        if e.fn == "sigmoid":
            return 0.0, 1.0
        if e.fn == "tanh":
            return (math.tanh(a) if math.isfinite(a) else -1.0), (math.tanh(b_) if math.isfinite(b_) else 1.0)
        if e.fn in ("sqrt", "abs"):
            return 0.0, math.inf
        if e.fn == "min":
            return min(a, args[1][0]), min(b_, args[1][1])
        if e.fn == "max":
            return max(a, args[1][0]), max(b_, args[1][1])
        if e.fn == "clamp":
            return max(a, args[1][0]), min(b_, args[2][1])
    return full


# --- the program ------------------------------------------------------------------------------


def _clause_set(b: Builder, merged: Resolved) -> None:
    """The objective's clauses as a set: none unknown, the three required ones present, no
    'where' bindings on threat and attack."""
    c = merged.clauses
    for key, clause in c.items():
        if key not in OBJECTIVE_CLAUSES:
            b.error(f"unknown clause '{key}'", clause.key.span,
                    did_you_mean(key, OBJECTIVE_CLAUSES) or f"an objective has {one_of(OBJECTIVE_CLAUSES)}")
    examples = {"threat": "threat linf(eps = 8/255)", "attack": "attack pgd(steps = 10, step_size = 2/255)",
                "loss": "loss ce(adv)"}
    for key, example in examples.items():
        if key not in c:
            b.error(f"objective '{merged.name.name}' has no '{key}' clause", merged.name.span, f"add: {example}")
    for key in ("threat", "attack"):
        clause = c.get(key)
        if clause is not None and clause.where:
            b.error(f"'{key}' takes no 'where' bindings", clause.where[0].span,
                    "bindings belong to weight, loss and stop expressions")


def _settled_train(b: Builder, train, merged: Resolved) -> ir.Train | bool:
    """The train block's IR from its checked clauses and the settled values (False: reported)."""
    s = b.settled
    data, model, values, (optim, oargs), guard = train
    v = {k: (s[x].const if isinstance(x, str) and x in s else x) for k, x in values.items()}
    origins = tuple((k, b.origin(cl)) for k, cl in sorted(merged.train.items()) if cl.span is not None)
    # a constant argument as its value, one that follows the epoch (or the step) as its setting
    optim_args = tuple(sorted((k, (s[x].const if s[x].const is not None else s[x]) if isinstance(x, str) and x in s
                               else x) for k, x in oargs.items() if k != "lr"))
    train_ir = ir.Train(data[0], data[1], model[0], model[1], int(v["epochs"]), int(v["batch"]), int(v["seed"]),
                        optim, s[oargs["lr"]], optim_args, v["precision"], v["val"], v["augment"], v["sync_bn"],
                        v["channels_last"], v["compile"], origins,
                        _settled_guard(s, guard, b.origin(merged.train.get("guard"))))
    if isinstance(train_ir.val, float) and train_ir.val >= 1 and not train_ir.val.is_integer():
        b.error("'val' is a fraction below 1 or a whole number of samples", merged.train["val"].value.span)
        return False
    return train_ir


def build(merged: Resolved, report: Reporter, overrides, spec_hash: str) -> ir.Program | None:
    """The checked program of a resolved spec, or None with every problem in ``report``: each
    clause checked (``_threat`` ... ``_loss``, ``_train``), the settings settled over the run
    (:func:`settle`), then the IR assembled from the settled values and the warnings added."""
    b = Builder(report)
    c = merged.clauses
    _clause_set(b, merged)
    norm = _threat(b, c.get("threat"))
    attack = _attack(b, c.get("attack"))
    train = _train(b, merged)
    b.has_train = train != "absent"
    form = _form(b, c.get("form"))
    perturb = _perturb(b, c.get("perturb"))
    if form is not None and form[0] == "free" and not _free_rules(b, c, norm, attack):
        form = None
    weight = _weight(b, c.get("weight"))
    loss = _loss(b, c.get("loss"), weight is not None and weight[0] != "none")
    stop = None
    if form is not None and form[2] is not None:
        stop = _stop(b, form[2], form[3], c.get("form"))
        if stop is None:
            form = None
    evaluate = evaluation_list(b.check, merged.evaluate.attacks if merged.evaluate is not None
                               else _default_evaluate(report))
    if evaluate is not None and merged.evaluate is not None and not merged.evaluate.attacks:
        b.error("the evaluate block lists no attack", merged.evaluate.span, "e.g. evaluate { natural pgd(steps = 20) }")
        evaluate = None
    if None in (norm, attack, form, weight, loss, train, evaluate, perturb) or report.diags:
        return None
    epochs = None if train == "absent" else train[2]["epochs"]
    if isinstance(epochs, str):  # a setting key: the number of epochs is a constant
        epochs = b.pending[epochs].x.value if isinstance(b.pending[epochs].x, ir.XConst) else None
    if not settle(b, epochs) or report.diags:
        return None
    s = b.settled
    threat = ir.Threat(norm, s["threat.eps"], b.origin(c["threat"]))
    a = attack
    attack_ir = ir.Attack(s[a["steps"]], s[a["step_size"]], a["init"], float(s[a["init_scale"]].const), a["loss"],
                          s[a["noise"]], float(s[a["confidence"]].const), a["mode"], b.origin(c["attack"]))
    kind, fargs, _, fplain = form
    replay = s[fargs["replay"]].const if kind == "free" else None
    form_ir = ir.Form(kind, s.get(fargs.get("tau")), s.get(fargs.get("rho")), stop,
                      expr_text(form[2]) if form[2] is not None else "", tuple(s[k] for k in fplain.values()),
                      b.origin(c.get("form")), replay)
    wkind, fn, lam, from_epoch, normalise, wexpr, wplain = weight
    from_value = s[from_epoch].const if isinstance(from_epoch, str) else (from_epoch or 0)
    wtext = expr_text(c["weight"].value) if "weight" in c else "none"
    weight_ir = ir.Weight(wkind, fn, s.get(lam) if lam else None, int(from_value), normalise, wexpr,
                          tuple(s[k] for k in wplain.values()), b.origin(c.get("weight")), wtext)
    divisions = [(wexpr, wplain, "weight", c.get("weight"), int(from_value)), (stop, fplain, "stop rule", form[2], 0),
                 (loss[0], loss[1], "loss", c.get("loss"), 0)]  # fmt: skip
    for e, plain, what, where, start in divisions:
        span = getattr(getattr(where, "value", where), "span", None)
        if e is not None and not _divisors_nonzero(b, e, plain, epochs, what, span, start):
            return None
    if wkind == "expr":
        sign = weight_sign(wexpr, _scalar_ranges(b, values_epochs=epochs))
        if sign == "never":
            b.error(f"the weight {wtext} is never positive", getattr(c["weight"].value, "span", None),
                    "instance weights must be >= 0 and not all zero")
            return None
        weight_ir = replace(weight_ir, sign=sign)
    lexpr, lplain = loss
    loss_ir = ir.Loss(lexpr, tuple(s[k] for k in lplain.values()), b.origin(c["loss"]))
    train_ir = None if train == "absent" else _settled_train(b, train, merged)
    if train_ir is False:
        return None
    settings = tuple(s[k] for k in b.pending if k in s)
    program = ir.Program(
        name=merged.name.name, file=merged.files[-1][0] if merged.files else "<spec>", chain=tuple(merged.chain),
        spec_hash=spec_hash, threat=threat, attack=attack_ir, form=form_ir, weight=weight_ir, loss=loss_ir,
        train=train_ir, evaluate=evaluate, perturb=_settled_perturb(s, perturb, b.origin(c.get("perturb"))),
        overrides=tuple(overrides), files=tuple(merged.files), settings=settings,
        texts=tuple((f, report.sources.texts.get(f, "")) for f, _ in merged.files), parents=tuple(merged.parents),
    )
    from .warn import warn_program

    warn_program(b, program, merged)
    rendered = tuple(ir.Warning(d.code, d.message, render_one(d, report.sources)) for d in report.warnings)
    return replace(program, warnings=rendered)


def _settled_perturb(s: dict, keys, origin) -> ir.Perturb | None:
    if keys == "absent":
        return None
    return ir.Perturb(float(s[keys["gamma"]].const), int(s[keys["steps"]].const), float(s[keys["lr"]].const),
                      int(s[keys["from_epoch"]].const), origin)


def _settled_guard(s: dict, keys, origin) -> ir.Guard | None:
    if keys is None:
        return None
    return ir.Guard(int(s[keys["steps"]].const), float(s[keys["step_size"]].const), float(s[keys["drop"]].const),
                    origin)


def _divisors_nonzero(b: Builder, e: ir.E, plain: dict[str, str], epochs: int | None, what: str, span,
                      start: int) -> bool:
    """A weight, loss or stop rule may divide by a number of the spec (``exp(-margin / T)``)
    only where that number is not 0: checked at every epoch it is computed (a weight from its
    ``from_epoch``), as the settings are."""
    values = _Values(b.pending, epochs)
    names = {n: k for n, k in SETTING_KEYS.items() if k in b.pending} | {"K": "attack.steps", "lambda": "weight.lambda"}
    names |= plain
    for node in ir.walk(e):
        if not (isinstance(node, ir.EBin) and node.op == "/"):
            continue
        if any(isinstance(n, (ir.EQty, ir.ETerm)) or (isinstance(n, ir.EVar) and n.name == "weight")
               for n in ir.walk(node.right)):
            continue  # a per-sample divisor: its values are known only when it runs
        checks = [x for x in values.epochs_to_check() if x >= start]
        for epoch in checks:
            if _scalar(node.right, epoch, values, names, epochs) == 0:
                divisor = etext(node.right)
                at = f" at epoch {epoch}" if any(_scalar(node.right, x, values, names, epochs) != 0 for x in checks) else ""
                b.error(f"division by zero in the {what}: {divisor} is 0{at}", span,
                        f"the {what} divides by {divisor}: keep it away from 0")
                return False
    return True


def _scalar(e: ir.E, epoch: int, values: _Values, names: dict[str, str], epochs: int | None) -> float:
    """The value at an epoch of an expression of scalars (no per-sample quantity in it)."""
    if isinstance(e, ir.EConst):
        return e.value
    if isinstance(e, ir.EVar):
        if e.name == "epoch":
            return epoch
        if e.name == "progress":
            return epoch / epochs
        return values.at(names[e.name], epoch)
    if isinstance(e, ir.ENeg):
        return -_scalar(e.operand, epoch, values, names, epochs)
    if isinstance(e, ir.EBin):
        a, c = _scalar(e.left, epoch, values, names, epochs), _scalar(e.right, epoch, values, names, epochs)
        try:
            return {"+": lambda: a + c, "-": lambda: a - c, "*": lambda: a * c, "/": lambda: a / c,
                    "^": lambda: float(a) ** float(c)}[e.op]()
        except (ZeroDivisionError, OverflowError, ValueError):
            return math.nan
    try:
        return _SCALAR_MATH[e.fn](*(_scalar(a, epoch, values, names, epochs) for a in e.args))
    except (OverflowError, ValueError):
        return math.nan


def _default_evaluate(report: Reporter):
    from .parse import parse_eval_list

    report.sources.texts.setdefault("<default evaluate>", DEFAULT_EVALUATE)
    return parse_eval_list(DEFAULT_EVALUATE, "<default evaluate>")


def _scalar_ranges(b: Builder, values_epochs: int | None) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of every scalar over the run, for proving a weight's sign."""
    values = _Values(b.pending, values_epochs)
    epochs = values.epochs_to_check()
    out = {}
    for key, p in b.pending.items():
        vs = [values.at(key, e) for e in epochs]
        vs = [v for v in vs if v is not None and not math.isnan(v)]
        if vs:
            out[p.name] = (min(vs), max(vs))
            out[key.split(".", 1)[1]] = out[p.name]
    if "attack.steps" in b.pending:
        out["K"] = out["steps"]
    out["epoch"] = (0, max(epochs) if epochs else 0)
    out["progress"] = (0, 1)
    return out


# reference for fixed parameters without a table entry (used by tests and the runtime)
FIXED_NUM = fixed("num")
