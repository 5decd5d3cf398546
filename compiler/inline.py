"""``advc compile --standalone``: the generated program with advc's runtime copied in.

The generated module imports a few names from ``advc.*`` (attack primitives, losses, the data
reader and model it uses, the loop's pieces, the checkpoint writer). This replaces those imports
by the definitions themselves, read from advc's own source with ``ast``: each name's top-level
definition, the definitions it uses (in its module, or imported from another advc module), and
the module-level imports those need -- nothing else. The result needs only torch, torchvision,
accelerate, safetensors, numpy (and scikit-learn for the digits) and runs with ``python FILE``.

A runtime function that imports advc inside its body cannot be copied this way; that is a bug
of the runtime, reported here by name rather than shipped as a file that fails later.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
from dataclasses import dataclass, field

from advc import __version__

_FROM_ADVC = re.compile(r"^from (advc[\w.]*) import (\([^)]*\)|[^\n]*)\n", re.M)


class NotInlinable(Exception):
    """A runtime piece that a standalone program cannot carry (a generator or runtime bug)."""


@dataclass
class _Module:
    name: str
    path: str
    source: str
    defs: dict[str, ast.stmt] = field(default_factory=dict)  # top-level name -> its statement
    imports: dict[str, tuple[str, ast.stmt]] = field(default_factory=dict)  # bound name -> (module, stmt)


@functools.cache
def _module(name: str) -> _Module:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:  # pragma: no cover - advc's own modules exist
        raise NotInlinable(f"cannot find the source of {name}")
    with open(spec.origin, encoding="utf-8") as f:
        source = f.read()
    mod = _Module(name, spec.origin, source)
    package = name.rsplit(".", 1)[0]
    for stmt in ast.parse(source).body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.defs[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        mod.defs[n.id] = stmt
        elif isinstance(stmt, ast.Import):
            for a in stmt.names:
                mod.imports[a.asname or a.name.split(".")[0]] = (a.name, stmt)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module != "__future__":
            source_mod = stmt.module or ""
            if stmt.level:  # from . import losses / from .x import y
                source_mod = package + ("." + source_mod if source_mod else "")
            for a in stmt.names:
                target = f"{source_mod}.{a.name}" if stmt.module is None and stmt.level else source_mod
                mod.imports[a.asname or a.name] = (target, stmt)
    return mod


def _names(node: ast.AST) -> set[str]:
    """Every name a definition reads (loads, decorators, bases, annotations, attribute roots)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


class _Inliner:
    def __init__(self) -> None:
        self.order: list[tuple[str, str, str]] = []  # (module, name, source) in definition order
        self.done: dict[tuple[str, str], str] = {}
        self.imports: set[str] = set()  # import statements of third-party/std modules
        self.taken: dict[str, tuple[str, str]] = {}  # emitted name -> (module, name)

    def add(self, module: str, name: str) -> None:
        key = (module, name)
        if key in self.done:
            return
        mod = _module(module)
        if name not in mod.defs:
            target = mod.imports.get(name)
            if target is not None and target[0].startswith("advc"):
                real = target[0]
                if importlib.util.find_spec(real) is not None and name not in _module(real).defs:
                    raise NotInlinable(f"{module}.{name} is a module, not a definition")
                self.done[key] = "alias"
                self.add(real, name)
                return
            raise NotInlinable(f"{module} defines no {name}")
        self.done[key] = "pending"
        stmt = mod.defs[name]
        for inner in ast.walk(stmt):
            if (isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("advc")) or (
                    isinstance(inner, ast.ImportFrom) and inner.level):
                raise NotInlinable(f"{module}.{name} imports advc inside its body")
        for used in sorted(_names(stmt)):
            if used == name:
                continue
            if used in mod.defs:
                self.add(module, used)
            elif used in mod.imports:
                target, imp = mod.imports[used]
                if target.startswith("advc"):
                    self.add(target, used)
                else:
                    self.imports.add(ast.unparse(_only(imp, used)))
        if name in self.taken and self.taken[name] != key:
            other = ".".join(self.taken[name])
            raise NotInlinable(f"{module}.{name} and {other} would share one name in the standalone file")
        self.taken[name] = key
        first = min([d.lineno for d in getattr(stmt, "decorator_list", [])] + [stmt.lineno])
        text = "\n".join(mod.source.splitlines()[first - 1 : stmt.end_lineno])  # decorators included
        if text not in (src for _, _, src in self.order):  # one statement may define several names
            self.order.append((module, name, text))
        self.done[key] = "done"


def _only(stmt: ast.stmt, name: str) -> ast.stmt:
    """The import statement narrowed to the one bound name."""
    if isinstance(stmt, ast.Import):
        return ast.Import([a for a in stmt.names if (a.asname or a.name.split(".")[0]) == name])
    return ast.ImportFrom(stmt.module, [a for a in stmt.names if (a.asname or a.name) == name], stmt.level)


def _import_block(lines: set[str]) -> str:
    """Imports as ruff's isort lays them out: the standard library, then third-party packages;
    ``import x`` before ``from x import ...``, one ``from`` line per module."""
    plain, froms = set(), {}
    for line in lines:
        if line.startswith("import "):
            plain.add(line)
        else:
            module, _, names = line[len("from "):].partition(" import ")
            froms.setdefault(module, set()).update(n.strip() for n in names.split(","))
    merged = plain | {f"from {m} import {', '.join(sorted(ns, key=lambda n: (not n[:1].isupper(), n)))}"
                      for m, ns in froms.items()}

    def top(line: str) -> str:
        return line.split()[1].split(".")[0]

    def key(line: str):
        return (0 if line.startswith("import ") else 1, line.split()[1])

    std = sorted((x for x in merged if top(x) in sys.stdlib_module_names and top(x) != "__future__"), key=key)
    third = sorted((x for x in merged if top(x) not in sys.stdlib_module_names), key=key)
    return "\n\n".join("\n".join(b) for b in (std, third) if b)


def inline_runtime(text: str) -> str:
    """The standalone form of a generated module (see the module docstring)."""
    wanted: list[tuple[str, str]] = []
    for m in _FROM_ADVC.finditer(text):
        names = [n.strip() for n in m.group(2).strip("()").replace("\n", " ").split(",") if n.strip()]
        wanted += [(m.group(1), n) for n in names]
    inliner = _Inliner()
    for module, name in wanted:
        inliner.add(module, name)
    body = _FROM_ADVC.sub("", text)
    header, _, rest = body.partition("\nfrom __future__ import annotations\n")
    lines = rest.splitlines()
    first = next(i for i, line in enumerate(lines) if line and not line.startswith(("import ", "from ")))
    own = {line for line in lines[:first] if line}
    after = "\n".join(lines[first:]) + "\n"
    parts = [header.rstrip("\n"), "", "from __future__ import annotations", "",
             _import_block(own | inliner.imports), ""]
    parts.append(f"# --- advc {__version__}'s runtime, inlined: the pieces this program calls "
                 + "-" * 20)
    modules = list(dict.fromkeys(module for module, _, _ in inliner.order))  # in order of first use
    for module in modules:
        parts += ["", "", f"# from {module.replace('.', '/').replace('advc/', '', 1)}.py"]
        for i, (_, _, src) in enumerate(x for x in inliner.order if x[0] == module):
            parts += ["", ""] if i else []
            parts.append(src)
    parts += ["", "", after.lstrip("\n")]
    return "\n".join(parts)
