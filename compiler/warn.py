"""Warnings: settings that check but never take effect, or probably do not mean what they say.

Each has a code (``advc check --allow CODE`` silences it, ``--strict`` makes the rest errors):

==========================  ===================================================================
``unreachable-schedule``    a schedule changes at an epoch the run never reaches
``weights-never-start``     ``from_epoch`` at or after the last epoch: every weight stays 1
``constant-weight``         the weight is the same for every sample, so normalising makes it 1
``eval-eps-not-final``      evaluation runs at another ε than the largest training used
``eval-eps-large``          an evaluation attack's ε is far above training's
``shadowed-binding``        a where-binding hides a setting of the same name
``large-lr``                a learning rate above 10
==========================  ===================================================================
"""

from __future__ import annotations

from . import ir
from .check import show
from .diagnostics import Span
from .vocabulary.clauses import LR_WARN

CODES = ("unreachable-schedule", "weights-never-start", "constant-weight", "eval-eps-not-final",
         "eval-eps-large", "shadowed-binding", "large-lr")  # fmt: skip
EVAL_EPS_FACTOR = 2.0  # an evaluation ε beyond this many times training's largest is flagged


def warn_program(b, program: ir.Program, merged) -> None:
    """Add the program's warnings to ``b.report`` (``b``: the ``program.Builder`` that built it)."""
    from .program import _Values

    report, pending = b.report, b.pending
    epochs = program.train.epochs if program.train is not None else None
    values = _Values(pending, epochs)
    if epochs is not None:
        last = epochs - 1
        for p in pending.values():
            for node in ir.xwalk(p.x):
                if isinstance(node, ir.XSched) and node.every == "epoch":
                    # a piecewise value starting after the last epoch never applies; an interpolation
                    # toward a point at `epochs` (the run's end) shapes every epoch before it
                    bound = last if node.kind == "piecewise" else epochs
                    late = [e for e, _ in node.points if e > bound]
                    if late:
                        report.warn("unreachable-schedule",
                                    f"'{p.name}' changes at epoch {late[0]}, but the run has {epochs} epochs "
                                    f"(0 to {last}): that piece never takes effect", p.span,
                                    "shorten the schedule or train longer")
        w = program.weight
        if w.kind != "none" and w.from_epoch > last:
            report.warn("weights-never-start",
                        f"weights start at epoch {w.from_epoch}, but the run ends at epoch {last}: every weight stays 1",
                        _span(program, w.origin), "lower from_epoch or train longer")
        lr = pending.get("train.lr")
        if lr is not None:
            top = max((values.at("train.lr", e) for e in values.epochs_to_check()), default=0)
            o = {k: v for n in ir.xwalk(lr.x) if isinstance(n, ir.XSched) for k, v in n.options}
            top = max(top, o.get("max", 0))
            if top > LR_WARN:
                report.warn("large-lr", f"a learning rate of {show(top)} rarely trains anything", lr.span,
                            "typical rates are 0.001 to 0.2")
        eps = pending["threat.eps"]
        if not isinstance(eps.x, ir.XConst):
            at_end = values.at("threat.eps", last)
            top = max(values.at("threat.eps", e) for e in values.epochs_to_check())
            final = next((n.points[-1][1] for n in ir.xwalk(eps.x) if isinstance(n, ir.XSched) and n.points), top)
            if at_end < max(top, final):
                report.warn("eval-eps-not-final",
                            f"evaluation runs at eps = {short(at_end)} (its value at the last epoch, {last}), below "
                            f"the {short(max(top, final))} the schedule reaches", eps.span,
                            "train until the schedule ends, or evaluate with pgd(eps = ...)")
    w = program.weight
    if w.kind == "expr" and not ir.quantities(w.expr) and w.normalise != "none":
        report.warn("constant-weight",
                    f"the weight {w.text} is the same for every sample: normalised to mean 1 it is 1 everywhere",
                    _span(program, w.origin), "use per-sample quantities (kappa, margin, pm, ...) or normalise = none")
    top_eps = max((values.at("threat.eps", e) for e in values.epochs_to_check()), default=None)
    items = list(merged.evaluate.attacks) if merged.evaluate is not None else []
    for i, attack in enumerate(program.evaluate):
        e = dict(attack.params).get("eps")
        if e is not None and top_eps and e > EVAL_EPS_FACTOR * top_eps:
            # the attack itself when the evaluate block lists it (evaluation_list keeps their order)
            span = getattr(items[i], "span", None) if i < len(items) else None
            span = span or (merged.evaluate.span if merged.evaluate is not None else None)
            report.warn("eval-eps-large",
                        f"{attack.label} evaluates at {e / top_eps:.3g} times the largest training eps "
                        f"({short(top_eps)})", span, "intended for a robustness curve? then silence this warning")


def short(v: float) -> str:
    """A value for a warning, to four digits: 0.02, not 0.019999999999999997 (a warning says
    where to look; an error that a bound is crossed keeps every digit, through check.show)."""
    return f"{v:.4g}"


def _span(program: ir.Program, origin: ir.Origin | None) -> Span | None:
    if origin is None:
        return None
    col = len(origin.text) - len(origin.text.lstrip()) + 1
    return Span(origin.file, origin.line, col, origin.line, col + len(origin.text.split()[0] if origin.text.split() else "x"))
