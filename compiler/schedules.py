"""Stage 2b, schedules: a setting that changes over the run (``piecewise``, ``linear``,
``cosine``, per epoch or per step; the per-step learning-rate schedules ``onecycle`` and
``cyclic``) checked into ``ir.XSched``. Mixed into :class:`.check.Checker`; ranges over the
whole run are checked later, when the run's length is known (``program.settle``)."""

from __future__ import annotations

from . import ast, ir
from .vocabulary import Param

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


class ScheduleChecks:
    """The schedule part of :class:`.check.Checker` (it supplies ``error``, ``const``,
    ``in_range`` and ``head_args``)."""

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
