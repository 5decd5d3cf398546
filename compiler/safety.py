"""The last gate before generated code is written or imported: an allow-list walk of its AST.

The generator only ever emits a small, fixed vocabulary -- a few imports, assignments,
functions, loops and calls into torch, math and advc.runtime. This walker checks every
generated module against exactly that vocabulary (node types, imported modules, global
names, attribute names, no dunders, no strings used as code), so even a bug in the
generator cannot turn a hostile spec into a module that does something else.
"""

from __future__ import annotations

import ast

ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Constant, ast.Import, ast.ImportFrom, ast.alias, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.FunctionDef, ast.ClassDef, ast.Return, ast.If, ast.For, ast.Break, ast.With,
    ast.withitem, ast.Call, ast.keyword, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.BinOp,
    ast.UnaryOp, ast.Compare, ast.Tuple, ast.List, ast.Dict, ast.arguments, ast.arg, ast.Load, ast.Store,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Pow, ast.USub, ast.UAdd, ast.Invert, ast.BitAnd,
    ast.BitOr, ast.Not, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Is, ast.IsNot,
)  # fmt: skip

ALLOWED_IMPORTS = {
    "__future__": {"annotations"},
    "dataclasses": {"dataclass"},
    "advc.runtime": {"losses"},
    "advc.runtime.attacks": {"ascent_step", "attack_loss", "linf_box", "margin", "project", "random_start"},
}
ALLOWED_MODULES = {"math", "torch"}
BUILTINS = {"abs", "min", "max", "float", "int", "len", "range", "dataclass"}
ATTRIBUTES = {
    # torch / math / losses functions
    "tanh", "sigmoid", "exp", "log", "sqrt", "abs", "floor", "clamp", "minimum", "maximum", "full",
    "full_like", "zeros", "ones", "ones_like", "arange", "tensor", "as_tensor", "randn", "enable_grad", "no_grad",
    "autograd", "grad", "long", "float32", "float64", "cos", "pi", "inf", "Tensor",
    "cross_entropy", "kl_div", "boosted_ce", "true_prob",
    # tensor methods and fields
    "sum", "mean", "backward", "to", "detach", "requires_grad_", "numel", "shape", "dtype", "device", "train", "eval",
    "training", "step", "zero_grad", "x_adv", "kappa", "steps", "passes", "margin", "ce",
}  # fmt: skip


class UnsafeModule(Exception):
    """Raised when generated code steps outside the allow-list: a generator bug, never user error."""


def validate(source: str, extra_names: set[str] = frozenset()) -> None:
    """Check a generated module; raises ``UnsafeModule`` naming the first offending line."""
    tree = ast.parse(source)
    assigned = set(extra_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assigned.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assigned.add(node.name)
        elif isinstance(node, ast.arg):
            assigned.add(node.arg)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if not isinstance(node, ALLOWED_NODES):
            raise UnsafeModule(f"line {line}: {type(node).__name__} is not something advc generates")
        if isinstance(node, ast.Import):
            names = {a.name for a in node.names}
            if not names <= ALLOWED_MODULES or any(a.asname for a in node.names):
                raise UnsafeModule(f"line {line}: import of {sorted(names)}")
        if isinstance(node, ast.ImportFrom):
            allowed = ALLOWED_IMPORTS.get(node.module or "", set())
            if node.level or not {a.name for a in node.names} <= allowed:
                raise UnsafeModule(f"line {line}: import from {node.module}")
        if isinstance(node, ast.Name):
            if node.id.startswith("__"):
                raise UnsafeModule(f"line {line}: dunder name {node.id}")
            if isinstance(node.ctx, ast.Load) and node.id not in assigned | ALLOWED_MODULES | BUILTINS | {
                "losses", "ascent_step", "attack_loss", "linf_box", "margin", "project", "random_start", "annotations",
            }:
                raise UnsafeModule(f"line {line}: unknown name {node.id}")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr not in ATTRIBUTES):
            raise UnsafeModule(f"line {line}: attribute .{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
            raise UnsafeModule(f"line {line}: call to {node.func.id}")
