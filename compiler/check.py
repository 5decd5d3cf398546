"""Stage 2: syntax tree -> checked ``ir.Program``, or every problem found at once.

The checker resolves ``extends`` (same file first, then ``<dir>/<parent>.adv``), applies
``--set`` overrides, then validates each clause against the vocabulary below: names, types,
ranges and the variables of weight/loss expressions. It never stops at the first problem;
all diagnostics are raised together as one ``SpecError``.

The vocabulary tables here are the single place that says what the language means.
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import ast, ir
from .diagnostics import Diagnostic, Sources, Span, SpecError, did_you_mean, one_of
from .parse import decode, parse_expr, parse_text

# --- vocabulary --------------------------------------------------------------------------

OBJECTIVE_CLAUSES = ("threat", "attack", "form", "weight", "loss")
TRAIN_CLAUSES = ("data", "model", "epochs", "batch", "seed", "optim", "precision", "val", "augment", "sync_bn",
                 "channels_last", "compile")
DATASETS = ("digits", "cifar10", "cifar100", "svhn", "mnist", "imagefolder")
MODELS = ("small_cnn", "preact_resnet18", "wrn34_10", "wrn32_10", "wrn28_10", "wrn")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("piecewise", "linear", "cosine")
EVAL_ATTACKS = ("natural", "fgsm", "pgd", "cw", "autoattack", "square")

# functions usable in weight and loss expressions, with their number of arguments
FUNCTIONS = {
    "tanh": (1, 1), "sigmoid": (1, 1), "exp": (1, 1), "log": (1, 1), "sqrt": (1, 1),
    "abs": (1, 1), "floor": (1, 1), "min": (2, 2), "max": (2, 2), "clamp": (3, 3),
}  # fmt: skip
# per-sample loss terms of the outer objective: name -> allowed argument tuples
TERMS = {
    "ce": {("adv",), ("nat",)},
    "bce": {("adv",)},
    "kl": {("nat", "adv")},
    "prob": {("adv",), ("nat",)},
}
# variables of a weight expression; 'margin' and 'loss' are per-sample at the adversarial point
WEIGHT_VARS = {"kappa", "K", "lambda", "epoch", "margin", "loss"}
LOSS_VARS = {"weight", "kappa", "K", "epoch"}
GAIR_FUNCTIONS = ("tanh", "sigmoid", "discrete")
# names the generated module itself uses (compared case-insensitively): a where-binding may
# not take one, so user names can never shadow generated code
GENERATED_NAMES = frozenset(["eps", "step_size", "noise", "tau", "rho", "lam", "lr", "norm", "steps", "init", "init_scale", "attack_loss", "confidence", "train", "evaluate", "spec_name", "spec_file", "spec_hash", "advc_version", "math", "torch", "losses", "dataclass", "attack", "weights", "loss", "train_step", "attackresult", "ascent_step", "margin", "project", "random_start", "result", "model", "x", "y", "w", "kappa", "raw", "total", "count", "half", "all_reduce", "epoch", "logits", "logits_adv", "logits_nat", "per_sample", "n", "m", "xa", "ya", "grad", "objective", "budget", "active", "keep", "moving", "stop", "wrong", "passes", "final_logits", "final_margin", "final_ce", "x_adv", "x_step", "draw", "was_training", "value", "optimizer", "backward", "generator", "nat_logits"])


@dataclass(frozen=True)
class Param:
    """One parameter of a clause head: its type, range and default."""

    kind: str  # num | int | choice | str | bool | any
    required: bool = False
    default: object = None
    lo: float | None = None
    lo_strict: bool = False
    hi: float | None = None
    hi_strict: bool = False
    schedule: bool = True
    choices: tuple[str, ...] = ()
    allow_inf: bool = False

    def range_text(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_strict else '>='} {_fmt_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_strict else '<='} {_fmt_num(self.hi)}")
        return " and ".join(parts)


def _fmt_num(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _show(v) -> str:
    """A number for a message, short whatever its size."""
    if isinstance(v, int) and abs(v) >= 10**15:
        return f"{float(v):.3g}"
    if isinstance(v, float) and (math.isinf(v) or abs(v) >= 1e15):
        return f"{v:.3g}"
    return _fmt_num(v)


POS = Param("num", lo=0, lo_strict=True)
NONNEG = Param("num", lo=0)

HEADS: dict[str, dict[str, dict[str, Param]]] = {
    "threat": {
        "linf": {"eps": Param("num", required=True, lo=0, lo_strict=True)},
        "l2": {"eps": Param("num", required=True, lo=0, lo_strict=True)},
    },
    "attack": {
        "pgd": {
            "steps": Param("int", required=True, lo=1, schedule=False),
            "step_size": Param("num", required=True, lo=0, lo_strict=True),
            "init": Param("choice", default="uniform", choices=("none", "uniform", "normal")),
            "init_scale": Param("num", default=0.001, lo=0, lo_strict=True, schedule=False),
            "loss": Param("choice", default="ce", choices=("ce", "cw", "kl")),
            "noise": Param("num", default=0, lo=0),
            "confidence": Param("num", default=50, lo=0, schedule=False),
        },
    },
    "form": {
        "minmax": {},
        "minmin": {
            "tau": Param("int", default=0, lo=0),
            "rho": Param("num", default=0, lo=0),
        },
    },
    "weight": {
        "none": {},
        "gair": {
            "fn": Param("choice", default="tanh", choices=GAIR_FUNCTIONS),
            "lambda": Param("num", default=0, allow_inf=True),
            "from_epoch": Param("int", default=0, lo=0, schedule=False),
        },
    },
}

OPTIM_PARAMS = {
    "sgd": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),
        "momentum": Param("num", default=0.9, lo=0, hi=1, hi_strict=True, schedule=False),
        "weight_decay": Param("num", default=0, lo=0, schedule=False),
        "nesterov": Param("bool", default=False, schedule=False),
    },
    "adam": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),
        "weight_decay": Param("num", default=0, lo=0, schedule=False),
    },
    "adamw": {
        "lr": Param("num", required=True, lo=0, lo_strict=True),
        "weight_decay": Param("num", default=0.01, lo=0, schedule=False),
    },
}
DATA_PARAMS = {
    "root": Param("str", schedule=False),
    "download": Param("bool", default=False, schedule=False),
}
MODEL_PARAMS = {
    "width": Param("int", lo=1, schedule=False),
    "depth": Param("int", lo=1, schedule=False),
    "widen": Param("int", lo=1, schedule=False),
    "dropout": Param("num", lo=0, hi=1, hi_strict=True, schedule=False),
}
EVAL_PARAMS = {
    "natural": {},
    "fgsm": {"eps": Param("num", lo=0, schedule=False)},
    "pgd": {
        "steps": Param("int", default=20, lo=1, schedule=False),
        "step_size": Param("num", lo=0, lo_strict=True, schedule=False),
        "eps": Param("num", lo=0, schedule=False),
        "restarts": Param("int", default=1, lo=1, schedule=False),
    },
    "cw": {
        "steps": Param("int", default=30, lo=1, schedule=False),
        "step_size": Param("num", lo=0, lo_strict=True, schedule=False),
        "eps": Param("num", lo=0, schedule=False),
        "confidence": Param("num", default=50, lo=0, schedule=False),
    },
    "autoattack": {
        "eps": Param("num", lo=0, schedule=False),
        "queries": Param("int", default=5000, lo=1, schedule=False),
    },
    "square": {
        "eps": Param("num", lo=0, schedule=False),
        "queries": Param("int", default=5000, lo=1, schedule=False),
    },
}

# keys accepted by overrides: section.param (plus whole-clause `section=value`)
OVERRIDE_SECTIONS = OBJECTIVE_CLAUSES + ("train",)


# --- the checker ---------------------------------------------------------------------------


@dataclass
class _Merged:
    """An objective with its ancestors folded in: the winning clause for every key."""

    name: ast.Ident
    chain: list[str]
    clauses: dict[str, ast.Clause] = field(default_factory=dict)
    train: dict[str, ast.Clause] = field(default_factory=dict)
    evaluate: ast.Evaluate | None = None
    train_block: ast.Train | None = None  # the nearest train block, for locating what it lacks
    files: list[str] = field(default_factory=list)


class Checker:
    def __init__(self, sources: Sources | None = None):
        self.diags: list[Diagnostic] = []
        self.sources = sources or Sources()
        self.specs: dict[str, ast.Spec] = {}

    # diagnostics ------------------------------------------------------------------------
    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(message, span, hint))

    def fail_if_errors(self) -> None:
        if self.diags:
            # one message per problem, in source order
            def key(d: Diagnostic):
                s = d.span
                return (s.file, s.line, s.col) if s else ("", 0, 0)

            seen, unique = set(), []
            for d in sorted(self.diags, key=key):
                k = (d.message, d.span)
                if k not in seen:
                    seen.add(k)
                    unique.append(d)
            raise SpecError(unique, self.sources)

    # loading and extends ----------------------------------------------------------------
    def load(self, path: Path) -> ast.Spec | None:
        key = str(path)
        if key in self.specs:
            return self.specs[key]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.error(f"no such spec file: {path}", None, "check the path")
            return None
        except IsADirectoryError:
            self.error(f"{path} is a folder, not a spec file", None, "name a .adv file")
            return None
        except OSError as exc:
            self.error(f"cannot read {path}: {exc.strerror or exc}", None)
            return None
        try:
            text = decode(data, key)
            spec = parse_text(text, key)
        except SpecError as err:
            self.diags.extend(err.diagnostics)
            self.sources.texts.update(err.sources.texts)
            return None
        self.sources.texts[key] = spec.source
        self.specs[key] = spec
        return spec

    def resolve(self, spec: ast.Spec) -> _Merged | None:
        objectives = spec.objectives()
        names: dict[str, ast.Objective] = {}
        for obj in objectives:
            if obj.name.name in names:
                self.error(f"objective '{obj.name.name}' is defined twice in this file", obj.name.span)
            names[obj.name.name] = obj
        if not objectives:
            span = Span(spec.file, 1, 1, 1, 2)
            self.error("spec defines no objective", span, "start with: objective NAME { ... }")
            return None
        main = objectives[-1]
        chain: list[tuple[ast.Objective, ast.Spec]] = [(main, spec)]
        seen = {(spec.file, main.name.name)}
        current, current_spec = main, spec
        while current.parent is not None:
            found = self._find_parent(current.parent, current_spec)
            if found is None:
                break
            parent, parent_spec = found
            key = (parent_spec.file, parent.name.name)
            if key in seen:
                cycle = " -> ".join([o.name.name for o, _ in chain] + [parent.name.name])
                self.error(f"'extends' cycle: {cycle}", current.parent.span, "an objective cannot extend itself")
                break
            seen.add(key)
            chain.append((parent, parent_spec))
            current, current_spec = parent, parent_spec

        merged = _Merged(main.name, [o.name.name for o, _ in chain])
        for obj, owner in reversed(chain):  # root ancestor first, the spec itself last
            local: dict[str, ast.Clause] = {}
            for clause in obj.clauses:
                key = clause.key.name
                if key in local:
                    self.error(f"duplicate '{key}' clause in objective '{obj.name.name}'", clause.key.span,
                               "keep one; a later spec overrides an earlier one through 'extends'")
                local[key] = clause
            merged.clauses.update(local)
            if owner.file not in merged.files:
                merged.files.append(owner.file)
        for owner in {s.file: s for _, s in reversed(chain)}.values():
            train = owner.block(ast.Train)
            if train is not None:
                merged.train_block = train
                for clause in train.clauses:
                    merged.train[clause.key.name] = clause
            evaluate = owner.block(ast.Evaluate)
            if evaluate is not None:
                merged.evaluate = evaluate
        for owner in {s.file: s for _, s in chain}.values():
            for kind in (ast.Train, ast.Evaluate):
                blocks = [i for i in owner.items if isinstance(i, kind)]
                for extra in blocks[1:]:
                    label = "train" if kind is ast.Train else "evaluate"
                    self.error(f"second '{label}' block in this file", extra.span, "merge them into one")
        return merged

    def _find_parent(self, ident: ast.Ident, spec: ast.Spec):
        for obj in reversed(spec.objectives()):
            if obj.name.name == ident.name:
                return obj, spec
        sibling = Path(spec.file).parent / f"{ident.name}.adv"
        try:
            exists = sibling.is_file()
        except OSError:  # e.g. a name longer than the file system allows
            exists = False
        other = self.load(sibling) if exists else None
        if other is not None:
            for obj in reversed(other.objectives()):
                if obj.name.name == ident.name:
                    return obj, other
            self.error(f"{sibling} defines no objective '{ident.name}'", ident.span)
            return None
        if exists:
            return None  # its own diagnostics were recorded by load()
        known = {o.name.name for o in spec.objectives()}
        known |= {p.stem for p in Path(spec.file).parent.glob("*.adv")}
        known.discard(Path(spec.file).stem)
        self.error(f"unknown parent objective '{ident.name}'", ident.span,
                   did_you_mean(ident.name, known) or f"no objective of that name here and no {sibling}")
        return None

    # overrides --------------------------------------------------------------------------
    def apply_overrides(self, merged: _Merged, overrides: list[tuple[str, str]]) -> None:
        """``--set section.param=value``: replace a parameter (or a where-binding) before checking."""
        for index, (key, value) in enumerate(overrides, start=1):
            file = f"--set#{index}"
            line = f"{key}={value}"
            self.sources.texts[file] = line
            key_span = Span(file, 1, 1, 1, len(key) + 1)
            section, _, param = key.partition(".")
            if section not in OVERRIDE_SECTIONS or (section == "train" and not param) or "." in param:
                self.error(f"unknown override key '{key}'", key_span,
                           did_you_mean(section, OVERRIDE_SECTIONS) if section not in OVERRIDE_SECTIONS
                           else "write section.parameter, e.g. attack.steps=20")
                continue
            try:
                expr = parse_expr(" " * (len(key) + 1) + value, file)
            except SpecError as err:
                for d in err.diagnostics:
                    self.diags.append(d)
                continue
            origin_span = Span(file, 1, 1, 1, len(line) + 1)
            if section == "train":
                if param not in TRAIN_CLAUSES:
                    self.error(f"unknown train setting '{param}'", key_span,
                               did_you_mean(param, TRAIN_CLAUSES) or f"one of {one_of(TRAIN_CLAUSES)}")
                    continue
                merged.train[param] = ast.Clause(ast.Ident(param, key_span), expr, (), span=origin_span)
                continue
            clause = merged.clauses.get(section)
            if not param:  # replace the whole clause value
                where = clause.where if clause is not None else ()
                merged.clauses[section] = ast.Clause(ast.Ident(section, key_span), expr, where, span=origin_span)
                continue
            if clause is None:
                self.error(f"spec has no '{section}' clause to override", key_span,
                           f"set the whole clause instead: --set {section}=...")
                continue
            merged.clauses[section] = self._override_param(clause, param, expr, key_span)

    def _override_param(self, clause: ast.Clause, param: str, expr, key_span: Span) -> ast.Clause:
        for i, b in enumerate(clause.where):
            if b.name.name == param:
                where = clause.where[:i] + (ast.Binding(b.name, expr, span=key_span),) + clause.where[i + 1 :]
                return ast.Clause(clause.key, clause.value, where, span=clause.span)
        value = clause.value
        head = value.func.name if isinstance(value, ast.Call) else value.id if isinstance(value, ast.Name) else None
        known = HEADS.get(clause.key.name, {}).get(head) if head else None
        if known is not None and param in known:
            args = value.args if isinstance(value, ast.Call) else ()
            new_args = tuple(a for a in args if not (isinstance(a, ast.KwArg) and a.name.name == param))
            new_args += (ast.KwArg(ast.Ident(param, key_span), expr, span=key_span),)
            call = ast.Call(ast.Ident(head, getattr(value, "span", None)), new_args, span=value.span)
            return ast.Clause(clause.key, call, clause.where, span=clause.span)
        if clause.key.name in ("weight", "loss") and known is None:
            # an expression clause: overriding a name adds or replaces a where-binding
            binding = ast.Binding(ast.Ident(param, key_span), expr, span=key_span)
            return ast.Clause(clause.key, clause.value, clause.where + (binding,), span=clause.span)
        choices = sorted(known or ()) + [b.name.name for b in clause.where]
        self.error(f"'{clause.key.name}' has no parameter '{param}'", key_span,
                   did_you_mean(param, choices) or (f"it has {one_of(choices)}" if choices else None))
        return clause

    # constants and schedules ------------------------------------------------------------
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
            try:
                if expr.op == "+":
                    r = a + b
                elif expr.op == "-":
                    r = a - b
                elif expr.op == "*":
                    r = a * b
                elif expr.op == "/":
                    r = a / b
                    if float(r).is_integer() and isinstance(a, int) and isinstance(b, int):
                        r = float(r)
                elif isinstance(a, int) and isinstance(b, int) and abs(b) <= 64 and abs(a) < 2**32:
                    r = a**b
                else:
                    r = float(a) ** float(b)  # floats: 9^9^9 overflows at once instead of running for hours
                if isinstance(r, complex) or (isinstance(r, float) and math.isnan(r)):
                    raise ValueError
                if isinstance(r, int) and abs(r) > 10**18:
                    raise OverflowError
            except ZeroDivisionError:
                self.error("division by zero", expr.span)
                return None
            except (OverflowError, ValueError):
                self.error("this arithmetic has no finite real value", expr.span)
                return None
            if isinstance(r, float) and math.isinf(r) and not allow_inf:
                self.error("number is too large", expr.span)
                return None
            return r
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

    def number(self, expr, param: Param, label: str):
        """A number (or, where allowed, a schedule of numbers) within the parameter's range."""
        if isinstance(expr, ast.Call) and expr.func.name in SCHEDULES:
            if not param.schedule:
                self.error(f"'{label}' cannot follow a schedule", expr.func.span, "give one number")
                return None
            return self.schedule(expr, param, label)
        v = self.const(expr, allow_inf=param.allow_inf)
        if v is None:
            return None
        v = self.in_range(v, expr, param, label)
        return None if v is None else ir.Const(v)

    def in_range(self, v, expr, param: Param, label: str):
        if param.kind == "int":
            if isinstance(v, float) and not v.is_integer():
                self.error(f"'{label}' must be a whole number, got {v!r}", getattr(expr, "span", None))
                return None
            v = int(v)
        lo_bad = param.lo is not None and (v <= param.lo if param.lo_strict else v < param.lo)
        hi_bad = param.hi is not None and (v >= param.hi if param.hi_strict else v > param.hi)
        if lo_bad or hi_bad:
            self.error(f"'{label}' must be {param.range_text()}, got {_show(v)}", getattr(expr, "span", None))
            return None
        return v

    def schedule(self, call: ast.Call, param: Param, label: str):
        kind = call.func.name
        if param.kind == "int" and kind != "piecewise":
            self.error(f"'{label}' is a whole number, so it can only follow a piecewise schedule",
                       call.func.span)
            return None
        points, ok = [], True
        for arg in call.args:
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
            if (isinstance(epoch, float) and not epoch.is_integer()) or epoch < 0:
                self.error("a schedule's epochs are whole numbers >= 0", arg.key.span)
                ok = False
                continue
            value = self.in_range(value, arg.value, param, label)
            if value is None:
                ok = False
                continue
            if points and int(epoch) <= points[-1][0]:
                self.error("a schedule's epochs must increase", arg.key.span)
                ok = False
                continue
            points.append((int(epoch), value))
        if not ok:
            return None
        if not points:
            self.error(f"{kind}(...) needs at least one 'epoch: value' pair", call.span)
            return None
        if kind == "piecewise":
            if points[0][0] != 0:
                self.error("a piecewise schedule starts at epoch 0", call.args[0].key.span,
                           "add '0: value' first")
                return None
            return ir.Piecewise(tuple(points))
        if len(points) < 2:
            self.error(f"{kind}(...) needs at least two points", call.span)
            return None
        cls = ir.Linear if kind == "linear" else ir.Cosine
        return cls(tuple((e, float(v)) for e, v in points))

    def scalar(self, expr, param: Param, label: str):
        """A parameter of any kind (number/schedule, whole number, choice, string, bool)."""
        if param.kind in ("num", "int"):
            return self.number(expr, param, label)
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
        return expr  # pragma: no cover

    def head_args(self, value, table: dict[str, dict[str, Param]], what: str, section: str):
        """Check ``head(k = v, ...)`` against a table of heads; returns (head, {param: value}) or None."""
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
            v = self.scalar(arg.value, params[name], name)
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
                out[name] = ir.Const(p.default) if p.kind in ("num", "int") else p.default
        return (head, out) if ok else None

    # expressions of weight and loss -----------------------------------------------------
    def expression(self, expr, variables: set[str], bindings: set[str], where: str, terms: bool):
        """Translate a weight/loss expression to IR, validating every name it uses."""
        if isinstance(expr, ast.Num):
            return ir.EConst(expr.value)
        if isinstance(expr, ast.Str):
            self.error(f"a {where} expression cannot contain a string", expr.span)
            return None
        if isinstance(expr, ast.Name):
            if expr.id in variables or expr.id in bindings:
                return ir.EVar(expr.id)
            if expr.id == "inf":
                return ir.EConst(math.inf)
            if terms and expr.id in TERMS:
                self.error(f"'{expr.id}' is a loss term and needs arguments", expr.span,
                           f"e.g. {expr.id}({', '.join(sorted(TERMS[expr.id])[0])})")
                return None
            known = sorted(variables | bindings)
            self.error(f"unknown variable '{expr.id}' in {where} expression", expr.span,
                       did_you_mean(expr.id, known) or f"known: {', '.join(known)}")
            return None
        if isinstance(expr, ast.Neg):
            inner = self.expression(expr.operand, variables, bindings, where, terms)
            return None if inner is None else ir.ENeg(inner)
        if isinstance(expr, ast.BinOp):
            left = self.expression(expr.left, variables, bindings, where, terms)
            right = self.expression(expr.right, variables, bindings, where, terms)
            return None if left is None or right is None else ir.EBin(expr.op, left, right)
        if isinstance(expr, ast.Call):
            name = expr.func.name
            if terms and name in TERMS:
                args = []
                for a in expr.args:
                    if isinstance(a, ast.Name) and a.id in ("nat", "adv"):
                        args.append(a.id)
                    else:
                        self.error(f"{name}(...) takes 'nat' or 'adv'", getattr(a, "span", None))
                        return None
                if tuple(args) not in TERMS[name]:
                    forms = " or ".join(f"{name}({', '.join(f)})" for f in sorted(TERMS[name]))
                    self.error(f"{name}({', '.join(args)}) is not a loss term", expr.span, f"write {forms}")
                    return None
                return ir.ETerm(name, tuple(args))
            if name not in FUNCTIONS:
                choices = set(FUNCTIONS) | (set(TERMS) if terms else set())
                self.error(f"unknown function '{name}' in {where} expression", expr.func.span,
                           did_you_mean(name, choices) or f"functions: {', '.join(sorted(choices))}")
                return None
            lo, hi = FUNCTIONS[name]
            if any(isinstance(a, (ast.KwArg, ast.Pair)) for a in expr.args):
                self.error(f"{name}(...) takes plain arguments", expr.span)
                return None
            if not lo <= len(expr.args) <= hi:
                self.error(f"{name}(...) takes {lo} argument{'s' if lo > 1 else ''}, got {len(expr.args)}",
                           expr.span)
                return None
            args = [self.expression(a, variables, bindings, where, terms) for a in expr.args]
            if any(a is None for a in args):
                return None
            return ir.EFunc(name, tuple(args))
        self.error(f"unexpected element in {where} expression", getattr(expr, "span", None))
        return None

    def bindings(self, clause: ast.Clause, special: dict[str, Param]):
        """``where name = value, ...``: special names get their own Param, the rest are numbers.

        Returns (plain, extra, spans, ok); a bad binding is reported but its name stays known,
        so the expression is still checked and every problem is reported at once.
        """
        plain, extra, spans, ok = {}, {}, {}, True
        for b in clause.where:
            name = b.name.name
            if name in spans:
                self.error(f"'{name}' is bound twice", b.name.span)
                ok = False
                continue
            spans[name] = b.name.span
            reserved = (WEIGHT_VARS | LOSS_VARS | set(FUNCTIONS) | set(TERMS) | {"nat", "adv", "inf"}) - set(special)
            if name in reserved:
                self.error(f"'{name}' is a built-in name and cannot be bound", b.name.span)
                ok = False
                continue
            if name not in special and (name.lower() in GENERATED_NAMES or name.startswith("_")
                                        or keyword.iskeyword(name) or hasattr(builtins, name)):
                self.error(f"'{name}' is reserved by the generated code", b.name.span,
                           "choose another name for this binding")
                ok = False
                continue
            param = special.get(name, Param("num", allow_inf=True))
            v = self.scalar(b.value, param, name)
            if v is None:
                ok = False
            (extra if name in special else plain)[name] = v
        return plain, extra, spans, ok

    def unused_bindings(self, expr, plain: dict, spans: dict) -> bool:
        used = ir.variables(expr) if expr is not None else set(plain)
        ok = True
        for name in plain:
            if name not in used:
                self.error(f"'{name}' is bound but the expression never uses it", spans.get(name),
                           did_you_mean(name, used) or "remove it, or use it in the expression")
                ok = False
        return ok

    # sections ---------------------------------------------------------------------------
    def origin(self, clause: ast.Clause | None) -> ir.Origin | None:
        if clause is None or clause.span is None:
            return None
        line = self.sources.line(clause.span.file, clause.span.line) or ""
        return ir.Origin(clause.span.file, clause.span.line, line)

    def check_program(self, merged: _Merged, overrides, spec_hash: str) -> ir.Program | None:
        c = merged.clauses
        for key, clause in c.items():
            if key not in OBJECTIVE_CLAUSES:
                self.error(f"unknown clause '{key}'", clause.key.span,
                           did_you_mean(key, OBJECTIVE_CLAUSES) or f"an objective has {one_of(OBJECTIVE_CLAUSES)}")
        for key in ("threat", "attack", "loss"):
            if key not in c:
                example = {"threat": "threat linf(eps = 8/255)", "attack": "attack pgd(steps = 10, step_size = 2/255)",
                           "loss": "loss ce(adv)"}[key]
                self.error(f"objective '{merged.name.name}' has no '{key}' clause", merged.name.span, f"add: {example}")
        for key in ("threat", "attack", "form"):
            clause = c.get(key)
            if clause is not None and clause.where:
                self.error(f"'{key}' takes no 'where' bindings", clause.where[0].span,
                           "bindings belong to weight and loss expressions")

        threat = self._threat(c.get("threat"))
        attack = self._attack(c.get("attack"))
        form = self._form(c.get("form"))
        weight = self._weight(c.get("weight"))
        loss = self._loss(c.get("loss"), weight)
        train = self._train(merged)
        evaluate = self._evaluate(merged.evaluate)
        if None in (threat, attack, form, weight, loss, train, evaluate) or self.diags:
            return None
        return ir.Program(
            name=merged.name.name,
            file=merged.files[-1] if merged.files else "<spec>",
            chain=tuple(merged.chain),
            spec_hash=spec_hash,
            threat=threat,
            attack=attack,
            form=form,
            weight=weight,
            loss=loss,
            train=train,
            evaluate=evaluate,
            overrides=tuple(overrides),
        )

    def _threat(self, clause):
        if clause is None:
            return None
        got = self.head_args(clause.value, HEADS["threat"], "threat model", "threat")
        if got is None:
            return None
        head, args = got
        return ir.Threat(head, args["eps"], self.origin(clause))

    def _attack(self, clause):
        if clause is None:
            return None
        got = self.head_args(clause.value, HEADS["attack"], "attack", "attack")
        if got is None:
            return None
        _, a = got
        return ir.Attack(
            steps=a["steps"].value,
            step_size=a["step_size"],
            init=a["init"],
            init_scale=float(a["init_scale"].value),
            loss=a["loss"],
            noise=a["noise"],
            confidence=float(a["confidence"].value),
            origin=self.origin(clause),
        )

    def _form(self, clause):
        if clause is None:
            return ir.Form("minmax", ir.Const(0), ir.Const(0), None)
        got = self.head_args(clause.value, HEADS["form"], "form", "form")
        if got is None:
            return None
        head, a = got
        return ir.Form(head, a.get("tau", ir.Const(0)), a.get("rho", ir.Const(0)), self.origin(clause))

    def _weight(self, clause):
        if clause is None:
            return ir.Weight("none", None, ir.Const(0), 0, None, (), frozenset(), None)
        value = clause.value
        head = value.func.name if isinstance(value, ast.Call) else value.id if isinstance(value, ast.Name) else None
        if head in HEADS["weight"]:
            if clause.where:
                self.error(f"weight {head}(...) takes no 'where' bindings", clause.where[0].span,
                           "pass parameters inside the parentheses")
                return None
            got = self.head_args(value, HEADS["weight"], "weighting", "weight")
            if got is None:
                return None
            head, a = got
            if head == "none":
                return ir.Weight("none", None, ir.Const(0), 0, None, (), frozenset(), self.origin(clause))
            return ir.Weight("gair", a["fn"], a["lambda"], a["from_epoch"].value, None, (), frozenset(),
                             self.origin(clause))
        special = {"lambda": HEADS["weight"]["gair"]["lambda"], "from_epoch": HEADS["weight"]["gair"]["from_epoch"]}
        plain, extra, spans, ok = self.bindings(clause, special)
        expr = self.expression(value, WEIGHT_VARS, set(plain), "weight", terms=False)
        if expr is None or not self.unused_bindings(expr, plain, spans) or not ok:
            return None
        needs = frozenset(ir.variables(expr) & {"margin", "loss"})
        lam = extra.get("lambda", ir.Const(0))
        from_epoch = extra["from_epoch"].value if "from_epoch" in extra else 0
        return ir.Weight("expr", None, lam, from_epoch, expr, tuple(plain.items()), needs, self.origin(clause))

    def _loss(self, clause, weight):
        if clause is None:
            return None
        plain, _, spans, ok = self.bindings(clause, {})
        expr = self.expression(clause.value, LOSS_VARS, set(plain), "loss", terms=True)
        if expr is None or not self.unused_bindings(expr, plain, spans) or not ok:
            return None
        if not any(isinstance(n, ir.ETerm) for n in ir.walk(expr)):
            self.error("the loss uses no loss term", clause.value.span if hasattr(clause.value, "span") else None,
                       "use ce(adv), ce(nat), kl(nat, adv), bce(adv) or prob(...)")
            return None
        if weight is not None and weight.kind != "none" and "weight" not in ir.variables(expr):
            self.error("the objective defines a weight but the loss does not use it", clause.key.span,
                       "multiply a term by weight, e.g. loss ce(adv) * weight")
            return None
        return ir.Loss(expr, tuple(plain.items()), self.origin(clause))

    def _train(self, merged: _Merged):
        t = merged.train
        ok = True
        for key, clause in t.items():
            if key not in TRAIN_CLAUSES:
                self.error(f"unknown train setting '{key}'", clause.key.span,
                           did_you_mean(key, TRAIN_CLAUSES) or f"one of {one_of(TRAIN_CLAUSES)}")
                ok = False
            elif clause.where:
                self.error(f"'{key}' takes no 'where' bindings", clause.where[0].span)
                ok = False
        examples = {"data": "data digits", "model": "model small_cnn", "epochs": "epochs 10",
                    "optim": "optim sgd(lr = 0.1, momentum = 0.9)"}
        missing = [key for key in examples if key not in t]
        block = merged.train_block
        if missing and block is None and not t:
            self.error(f"objective '{merged.name.name}' has no train block", merged.name.span,
                       "add: train { " + "  ".join(examples.values()) + " }")
            ok = False
        elif missing:
            where = merged.name.span
            if block is not None and block.span is not None:
                b = block.span
                where = Span(b.file, b.line, b.col, b.line, b.col + len("train"))
            for key in missing:
                self.error(f"the train block has no '{key}'", where, f"add: {examples[key]}")
            ok = False
        data = self._named(t.get("data"), DATASETS, DATA_PARAMS, "data set")
        model = self._model(t.get("model"))
        epochs = self._int(t.get("epochs"), Param("int", lo=1, schedule=False), "epochs")
        batch = self._int(t.get("batch"), Param("int", lo=1, schedule=False), "batch", 128)
        seed = self._int(t.get("seed"), Param("int", lo=0, schedule=False), "seed", 0)
        optim = None
        if t.get("optim") is not None:
            got = self.head_args(t["optim"].value, OPTIM_PARAMS, "optimizer", "optim")
            if got is not None:
                head, a = got
                lr = a.pop("lr")
                args = tuple((k, v.value if isinstance(v, ir.Const) else v) for k, v in sorted(a.items()))
                optim = (head, lr, args)
        precision = "fp32"
        if t.get("precision") is not None:
            precision = self.scalar(t["precision"].value, Param("choice", choices=("fp32", "bf16", "fp16")), "precision")
        val = 0.02
        if t.get("val") is not None:
            c = self.number(t["val"].value, Param("num", lo=0, schedule=False), "val")
            if c is not None and c.value >= 1 and not float(c.value).is_integer():
                self.error("'val' is a fraction below 1 or a whole number of samples", t["val"].value.span)
                c = None
            val = None if c is None else c.value
        augment = self._bool(t.get("augment"), "augment", True)
        sync_bn = self._bool(t.get("sync_bn"), "sync_bn", False)
        channels_last = self._bool(t.get("channels_last"), "channels_last", False)
        compile_model = self._bool(t.get("compile"), "compile", False)
        if None in (data, model, epochs, batch, seed, optim, precision, val, augment, sync_bn, channels_last,
                    compile_model) or not ok:
            return None
        origins = tuple((k, self.origin(cl)) for k, cl in sorted(t.items()) if cl.span is not None)
        return ir.Train(
            data=data[0], data_args=data[1], model=model[0], model_args=model[1], epochs=epochs, batch=batch,
            seed=seed, optim=optim[0], lr=optim[1], optim_args=optim[2], precision=precision, val=val,
            augment=augment, sync_bn=sync_bn, channels_last=channels_last, compile=compile_model, origins=origins,
        )

    def _int(self, clause, param, label, default=None):
        if clause is None:
            return default
        c = self.number(clause.value, param, label)
        return None if c is None else c.value

    def _bool(self, clause, label, default):
        if clause is None:
            return default
        return self.scalar(clause.value, Param("bool"), label)

    def _named(self, clause, names, params, what):
        if clause is None:
            return None
        value = clause.value
        if isinstance(value, ast.Call) and value.func.name in names:
            got = self.head_args(value, {value.func.name: params}, what, clause.key.name)
            if got is None:
                return None
            args = {k: (v.value if isinstance(v, ir.Const) else v) for k, v in got[1].items()}
            return value.func.name, tuple(sorted(args.items()))
        if isinstance(value, ast.Name) and value.id in names:
            return value.id, ()
        name, span = (value.id, value.span) if isinstance(value, ast.Name) else (
            (value.func.name, value.func.span) if isinstance(value, ast.Call) else (None, getattr(value, "span", None)))
        if name is None:
            self.error(f"expected a {what} name", span, f"one of {one_of(names)}")
        else:
            self.error(f"unknown {what} '{name}'", span, did_you_mean(name, names) or f"one of {one_of(names)}")
        return None

    def _model(self, clause):
        if clause is None:
            return None
        value = clause.value
        if isinstance(value, ast.Str):
            module, sep, attr = value.value.partition(":")
            ident = r"[A-Za-z_][A-Za-z0-9_]*"
            import re

            if not sep or not re.fullmatch(rf"{ident}(\.{ident})*", module) or not re.fullmatch(ident, attr):
                self.error(f"'{value.value}' is not a model name or 'package.module:callable'", value.span,
                           f"built-in models: {one_of(MODELS)}")
                return None
            return value.value, ()
        return self._named(clause, MODELS, MODEL_PARAMS, "model")

    def _evaluate(self, block: ast.Evaluate | None):
        if block is None:
            return (ir.EvalAttack("natural", ()), ir.EvalAttack("pgd", (("restarts", 1), ("steps", 20))))
        out, ok = [], True
        for expr in block.attacks:
            got = self.head_args(expr, EVAL_PARAMS, "evaluation attack", "evaluate")
            if got is None:
                ok = False
                continue
            head, a = got
            params = tuple(sorted((k, v.value if isinstance(v, ir.Const) else v) for k, v in a.items()))
            out.append(ir.EvalAttack(head, params))
        return tuple(out) if ok else None


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
    checker = Checker()
    source = "evaluate { " + text + " }"
    checker.sources.texts[file] = source
    spec = parse_text(source, file)
    block = spec.block(ast.Evaluate)
    attacks = checker._evaluate(block)
    if block is None or not block.attacks:
        checker.error("no attacks given", None, "e.g. --attacks 'natural pgd(steps = 20) autoattack'")
    checker.fail_if_errors()
    return attacks


def check_file(path, overrides=None) -> ir.Program:
    """Parse, resolve ``extends``, apply overrides and check; raises ``SpecError`` on any problem."""
    checker = Checker()
    path = Path(path)
    spec = checker.load(path)
    if spec is None:
        checker.fail_if_errors()
    return _check(checker, spec, overrides)


def check_text(text: str, file: str = "<spec>", overrides=None) -> ir.Program:
    checker = Checker()
    spec = parse_text(text, file)
    checker.sources.texts[file] = text
    checker.specs[file] = spec
    return _check(checker, spec, overrides)


def _check(checker: Checker, spec: ast.Spec, overrides) -> ir.Program:
    pairs = normalize_overrides(overrides)
    merged = checker.resolve(spec)
    checker.fail_if_errors()  # an unresolved parent would only cascade into bogus errors
    checker.apply_overrides(merged, pairs)
    digest = hashlib.sha256()
    for file in merged.files:
        digest.update(checker.sources.texts.get(file, "").encode())
    for k, v in pairs:
        digest.update(f"\0{k}={v}".encode())
    program = checker.check_program(merged, pairs, digest.hexdigest())
    checker.fail_if_errors()
    assert program is not None
    return program
