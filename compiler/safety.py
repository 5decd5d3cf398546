"""The last gate before generated code is written or imported: an allow-list walk of its AST.

The generator only ever emits a small, fixed vocabulary -- a few imports, assignments,
functions, loops and calls into torch, math, accelerate and advc.runtime. This walker checks
every generated module against exactly that vocabulary (node types, imported modules, global
names, attribute names, no dunders but ``__name__ == "__main__"``, no strings used as code),
so even a bug in the generator cannot turn a hostile spec into a module that does something
else. A standalone module (``advc compile --standalone``) is this checked module with its
allow-listed imports from advc replaced by advc's own source (``inline.py``): nothing of the
spec reaches that part.
"""

from __future__ import annotations

import ast

ALLOWED_NODES = (
    ast.Module, ast.Expr, ast.Constant, ast.Import, ast.ImportFrom, ast.alias, ast.Assign, ast.AugAssign,
    ast.AnnAssign, ast.FunctionDef, ast.ClassDef, ast.Return, ast.If, ast.For, ast.Break, ast.With,
    ast.withitem, ast.Call, ast.keyword, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.BinOp,
    ast.UnaryOp, ast.Compare, ast.Tuple, ast.List, ast.Dict, ast.arguments, ast.arg, ast.Load, ast.Store,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Pow, ast.USub, ast.UAdd, ast.Invert, ast.BitAnd,
    ast.BitOr, ast.Not, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.Is, ast.IsNot, ast.IfExp,
    ast.BoolOp, ast.And, ast.Or, ast.Mod,
)  # fmt: skip

ALLOWED_IMPORTS = {
    "__future__": {"annotations"},
    "dataclasses": {"dataclass"},
    "accelerate": {"Accelerator"},
    "accelerate.utils": {"DistributedDataParallelKwargs"},
    "advc.errors": {"UserError"},
    "advc.runtime.attacks": {"ascent_step", "attack_loss", "fosc", "grad_norm", "linf_box", "margin", "project",
                             "random_start"},
    "advc.runtime.losses": {"boosted_ce", "cross_entropy", "kl_div", "max_wrong_prob", "probabilistic_margin",
                            "true_prob"},
    "advc.runtime.loop": {"EpochStats", "RunArgs", "RunFolder", "attack_generator", "check_weights", "correct",
                          "mix_seed", "parameters_finite", "run_program", "seed_everything", "set_lr", "shard",
                          "stop_if_not_finite", "validate", "validation_size"},
    "advc.runtime.data": {"DeviceLoader", "RandomCropFlip", "split_validation", "read_digits", "read_cifar10",
                          "read_cifar100", "read_svhn", "read_mnist", "read_imagefolder"},
    "advc.runtime.models": {"check_model_fits", "small_cnn", "preact_resnet18", "wrn34_10", "wrn32_10", "wrn28_10",
                            "wrn", "user_model"},
    "advc.runtime.runs": {"TrackedRun", "run_loggers"},
    "advc.runtime.awp": {"WeightPerturbation"},
}  # fmt: skip
ALLOWED_MODULES = {"math", "torch"}
BUILTINS = {"abs", "min", "max", "float", "int", "len", "range", "dataclass", "enumerate", "round"}
ATTRIBUTES = {
    # torch / math functions
    "tanh", "sigmoid", "exp", "log", "sqrt", "abs", "floor", "clamp", "minimum", "maximum", "full", "full_like",
    "zeros", "ones", "ones_like", "arange", "tensor", "as_tensor", "randn", "enable_grad", "no_grad", "autograd",
    "grad", "long", "float32", "float64", "cos", "pi", "inf", "Tensor", "optim", "SGD", "Adam", "AdamW", "nn",
    "SyncBatchNorm", "convert_sync_batchnorm", "channels_last",
    # tensor methods and fields
    "sum", "mean", "backward", "to", "detach", "requires_grad_", "numel", "shape", "dtype", "device", "train", "eval",
    "training", "step", "zero_grad", "clone", "contiguous", "parameters",
    # the attack's result
    "x_adv", "kappa", "steps", "passes", "margin", "ce", "logits", "prob_adv", "prob_nat", "max_wrong_adv",
    "max_wrong_nat", "pm", "grad_norm_1", "grad_norm_2", "grad_norm_inf", "fosc",
    # the training program: Accelerate, the run folder, the data, the options
    "num_processes", "process_index", "prepare", "unwrap_model", "reduce", "wait_for_everyone",
    "x_train", "y_train", "x_test", "y_test", "in_channels", "num_classes", "image_size", "name",
    "set_epoch", "progress", "start", "resume", "save", "evaluate", "close", "dir", "epoch_seconds",
    "record", "add", "parse", "check", "epochs", "cpu", "out", "trust_code", "eval_batch", "data_root", "download",
    "perturbation", "collapsed", "perturb", "restore", "sign", "zeros_like",
}  # fmt: skip


class UnsafeModule(Exception):
    """Raised when generated code steps outside the allow-list: a generator bug, never user error."""


def _main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` -- the one place a dunder may appear."""
    return (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__"
            and len(node.comparators) == 1 and isinstance(node.comparators[0], ast.Constant)
            and node.comparators[0].value == "__main__")


def validate(source: str, extra_names: set[str] = frozenset()) -> None:
    """Check a generated module; raises ``UnsafeModule`` naming the first offending line."""
    tree = ast.parse(source)
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assigned = set(extra_names) | imported
    guards = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            assigned.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assigned.add(node.name)
        elif isinstance(node, ast.arg):
            assigned.add(node.arg)
        elif _main_guard(node):
            guards.add(id(node.left))
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
            if node.level or not {a.name for a in node.names} <= allowed or any(a.asname for a in node.names):
                raise UnsafeModule(f"line {line}: import from {node.module}")
        if isinstance(node, ast.Name):
            if node.id.startswith("__") and id(node) not in guards:
                raise UnsafeModule(f"line {line}: dunder name {node.id}")
            if (isinstance(node.ctx, ast.Load) and id(node) not in guards
                    and node.id not in assigned | ALLOWED_MODULES | BUILTINS | {"annotations"}):
                raise UnsafeModule(f"line {line}: unknown name {node.id}")
        if isinstance(node, ast.Attribute) and (node.attr.startswith("_") or node.attr not in ATTRIBUTES):
            raise UnsafeModule(f"line {line}: attribute .{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec"}:
            raise UnsafeModule(f"line {line}: call to {node.func.id}")
