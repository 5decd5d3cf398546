"""Stage 2a: a parsed spec -> the merged clauses of one objective (``extends`` and ``--set`` applied).

``extends fat`` looks for the parent objective, in order: in the same file; ``fat.adv`` in the
spec's own folder; ``fat.adv`` in each folder of the search path (``--spec-path``, then
``$ADVC_PATH``, separated by ``os.pathsep``); advc's packaged specs. ``extends "lib/fat.adv"``
names a file (relative to the spec's folder) and takes its last objective. Where each parent
came from is recorded (``Resolved.files``) and said by ``advc check``.

Overrides (``--set``) replace a clause parameter or where-binding (``attack.steps=20``,
``loss.beta=1``), a whole clause with its bindings (``weight=exp(-margin / T) where T = 2``), a
train setting (``train.data=digits(test = 0.25)``) or the evaluation list (``evaluate=natural
pgd(steps = 20)``). Their text is a pseudo-file ``--set#N`` so errors point into it with a caret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import ast
from .diagnostics import Reporter, Span, SpecError, did_you_mean, one_of
from .parse import parse_clause_value, parse_eval_list, parse_expr, parse_text, read_spec
from .vocabulary.clauses import HEADS, OBJECTIVE_CLAUSES, TRAIN_CLAUSES

SPEC_PATH_ENV = "ADVC_PATH"
OVERRIDE_SECTIONS = (*OBJECTIVE_CLAUSES, "train", "evaluate")


@dataclass
class Resolved:
    """An objective with its ancestors folded in: the winning clause for every key."""

    name: ast.Ident
    chain: list[str]
    clauses: dict[str, ast.Clause] = field(default_factory=dict)
    train: dict[str, ast.Clause] = field(default_factory=dict)
    evaluate: ast.Evaluate | None = None
    train_block: ast.Train | None = None  # the nearest train block, for locating what it lacks
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, how it was found), root first
    parents: list[tuple[str, str, str]] = field(default_factory=list)  # (objective, path, how), nearest first


def packaged_specs() -> Path:
    """advc's own specs folder (``specs/`` of the installed package)."""
    return Path(str(resources.files("advc.specs")))


def search_path(extra: list[str] | None = None) -> list[tuple[Path, str]]:
    """The folders ``extends NAME`` searches after the spec's own, with a label each."""
    folders = [(Path(p), "--spec-path") for p in (extra or [])]
    folders += [(Path(p), f"${SPEC_PATH_ENV}") for p in os.environ.get(SPEC_PATH_ENV, "").split(os.pathsep) if p]
    folders.append((packaged_specs(), "advc's packaged specs"))
    return folders


class Resolver:
    """Loads specs and resolves ``extends``.

    ``files``: spec texts by path, read before the disk -- how a run folder's recorded spec
    files are rebuilt exactly (``advc eval``, ``--resume``), wherever their parents came from.
    """

    def __init__(self, report: Reporter, spec_path: list[str] | None = None, files: dict[str, str] | None = None):
        self.report = report
        self.specs: dict[str, ast.Spec] = {}
        self.spec_path = spec_path
        self.files = files or {}

    def exists(self, path: Path) -> bool:
        return str(path) in self.files or (not self.files and _is_file(path))

    def load(self, path: Path) -> ast.Spec | None:
        key = str(path)
        if key not in self.specs:
            try:
                spec = parse_text(self.files[key], key) if key in self.files else read_spec(path)
            except SpecError as err:
                self.report.extend(err)
                return None
            self.report.sources.texts[key] = spec.source
            self.specs[key] = spec
        return self.specs[key]

    def add(self, spec: ast.Spec) -> None:
        self.report.sources.texts[spec.file] = spec.source
        self.specs[spec.file] = spec

    # extends --------------------------------------------------------------------------
    def resolve(self, spec: ast.Spec) -> Resolved | None:
        objectives = spec.objectives()
        seen_names: dict[str, ast.Objective] = {}
        for obj in objectives:
            if obj.name.name in seen_names:
                self.report.error(f"objective '{obj.name.name}' is defined twice in this file", obj.name.span)
            seen_names[obj.name.name] = obj
        if not objectives:
            self.report.error("spec defines no objective", Span(spec.file, 1, 1, 1, 2),
                              "start with: objective NAME { ... }")
            return None
        main = objectives[-1]
        chain: list[tuple[ast.Objective, ast.Spec, str]] = [(main, spec, "the spec")]
        seen = {(spec.file, main.name.name)}
        current, current_spec = main, spec
        while current.parent is not None:
            found = self._find_parent(current.parent, current_spec)
            if found is None:
                break
            parent, parent_spec, how = found
            key = (parent_spec.file, parent.name.name)
            if key in seen:
                cycle = " -> ".join([o.name.name for o, _, _ in chain] + [parent.name.name])
                self.report.error(f"'extends' cycle: {cycle}", current.parent.span, "an objective cannot extend itself")
                break
            seen.add(key)
            chain.append((parent, parent_spec, how))
            current, current_spec = parent, parent_spec

        merged = Resolved(main.name, [o.name.name for o, _, _ in chain])
        merged.parents = [(o.name.name, s.file, how) for o, s, how in chain[1:]]
        for obj, owner, how in reversed(chain):  # root ancestor first, the spec itself last
            local: dict[str, ast.Clause] = {}
            for clause in obj.clauses:
                key = clause.key.name
                if key in local:
                    self.report.error(f"duplicate '{key}' clause in objective '{obj.name.name}'", clause.key.span,
                                      "keep one; a later spec overrides an earlier one through 'extends'")
                local[key] = clause
            merged.clauses.update(local)
            if owner.file not in [f for f, _ in merged.files]:
                merged.files.append((owner.file, how))
        owners = {s.file: s for _, s, _ in reversed(chain)}
        for owner in owners.values():
            train = owner.block(ast.Train)
            if train is not None:
                merged.train_block = train
                for clause in train.clauses:
                    merged.train[clause.key.name] = clause
            evaluate = owner.block(ast.Evaluate)
            if evaluate is not None:
                merged.evaluate = evaluate
            for kind, label in ((ast.Train, "train"), (ast.Evaluate, "evaluate")):
                for extra in [i for i in owner.items if isinstance(i, kind)][1:]:
                    self.report.error(f"second '{label}' block in this file", extra.span, "merge them into one")
        return merged

    def _find_parent(self, parent: ast.Ident | ast.Str, spec: ast.Spec):
        here = Path(spec.file).parent
        if isinstance(parent, ast.Str):  # extends "path/to/x.adv": that file's last objective
            path = Path(parent.value) if Path(parent.value).is_absolute() else here / parent.value
            if not self.exists(path):
                self.report.error(f"no spec file {path}", parent.span, "the path is relative to this spec's folder")
                return None
            other = self.load(path)
            if other is None:
                return None
            objectives = other.objectives()
            if not objectives:
                self.report.error(f"{path} defines no objective", parent.span)
                return None
            return objectives[-1], other, f'extends "{parent.value}"'
        name = parent.name
        for obj in reversed(spec.objectives()):
            if obj.name.name == name:
                return obj, spec, "the same file"
        places = [(here, "the spec's folder"), *search_path(self.spec_path)]
        for folder, how in places:
            path = folder / f"{name}.adv"
            if not self.exists(path):
                continue
            other = self.load(path)
            if other is None:
                return None  # its own diagnostics were recorded by load()
            for obj in reversed(other.objectives()):
                if obj.name.name == name:
                    return obj, other, how
            self.report.error(f"{path} defines no objective '{name}'", parent.span)
            return None
        known = {o.name.name for o in spec.objectives()} - {spec.objectives()[-1].name.name}
        for folder, _ in places:
            known |= {p.stem for p in _glob(folder)}
        known.discard(Path(spec.file).stem)
        # the folders a user chose are named, so a mistyped --spec-path or $ADVC_PATH shows
        searched = ", ".join(how if how in ("the spec's folder", "advc's packaged specs") else f"{folder} ({how})"
                             for folder, how in places)
        self.report.error(f"unknown parent objective '{name}'", parent.span,
                          did_you_mean(name, known) or f"no {name}.adv in {searched}")
        return None

    # overrides ------------------------------------------------------------------------
    def apply_overrides(self, merged: Resolved, overrides: list[tuple[str, str]]) -> None:
        """``--set key=value``: replace parameters, bindings, clauses or train settings before checking."""
        for index, (key, value) in enumerate(overrides, start=1):
            file = f"--set#{index}"
            line = f"{key}={value}"
            self.report.sources.texts[file] = line
            key_span = Span(file, 1, 1, 1, len(key) + 1)
            origin_span = Span(file, 1, 1, 1, len(line) + 1)
            pad = " " * (len(key) + 1)  # so spans inside the value point into the whole line
            section, _, param = key.partition(".")
            if section not in OVERRIDE_SECTIONS or "." in param or (section == "evaluate" and param):
                hint = (did_you_mean(section, OVERRIDE_SECTIONS) if section not in OVERRIDE_SECTIONS
                        else "write section.parameter (attack.steps=20) or a whole clause (weight=...)")
                self.report.error(f"unknown override key '{key}'", key_span, hint)
                continue
            try:
                if section == "evaluate":
                    items = parse_eval_list(pad + value, file)
                    merged.evaluate = ast.Evaluate(items, span=origin_span)
                    continue
                if section == "train" or param:
                    expr, where = parse_expr(pad + value, file), ()
                else:
                    whole = parse_clause_value(pad + value, file)
                    expr, where = whole.value, whole.where
            except SpecError as err:  # (its source is the --set line itself, kept above)
                self.report.diags.extend(err.diagnostics)
                continue
            if section == "train":
                if not param:
                    self.report.error("unknown override key 'train'", key_span, "write train.setting=value, e.g. train.epochs=5")
                elif param not in TRAIN_CLAUSES:
                    self.report.error(f"unknown train setting '{param}'", key_span,
                                      did_you_mean(param, TRAIN_CLAUSES) or f"one of {one_of(TRAIN_CLAUSES)}")
                else:
                    merged.train[param] = ast.Clause(ast.Ident(param, key_span), expr, (), span=origin_span)
                continue
            clause = merged.clauses.get(section)
            if not param:  # the whole clause, with the bindings given (or none)
                merged.clauses[section] = ast.Clause(ast.Ident(section, key_span), expr, where, span=origin_span)
                continue
            if clause is None:
                self.report.error(f"spec has no '{section}' clause to override", key_span,
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
        self.report.error(f"'{clause.key.name}' has no parameter '{param}'", key_span,
                          did_you_mean(param, choices) or (f"it has {one_of(choices)}" if choices else None))
        return clause


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _glob(folder: Path) -> list[Path]:
    try:
        return list(folder.glob("*.adv"))
    except OSError:
        return []
