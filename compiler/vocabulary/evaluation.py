"""The attacks of an ``evaluate`` block (and of ``advc eval --attacks``): parameters, defaults, labels.

The defaults follow the published evaluation code of FAT / GAIRAT (PGD-20 with step eps/4 and a
random start, CW-inf with confidence 50, AutoAttack's standard version). Each entry names the
function of ``advc.runtime.evaluate`` that runs it. ``label`` gives the column a table prints:
the papers' names ("PGD-20", "CW∞", "AA"), with a non-default ε or restart count added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import Param, fixed

_EPS = fixed("num", lo=0, doc="radius (default: the threat's)")
_STEP = fixed("num", lo=0, lo_strict=True, doc="step size (default: eps/4)")
_RESTARTS = fixed("int", default=1, lo=1, hi=1000)
_TARGETS = fixed("int", default=9, lo=1, hi=999, doc="target classes (at most classes - 1 are used)")
_INIT = fixed("choice", default="uniform", choices=("none", "uniform", "normal"))


@dataclass(frozen=True)
class EvalAttack:
    name: str
    runner: str  # function in advc.runtime.evaluate
    base: str  # column label
    params: dict[str, Param] = field(default_factory=dict)
    steps_label: bool = False  # the label carries the step count: PGD-20, PGD-100
    default_steps: int | None = None
    doc: str = ""


ATTACKS: dict[str, EvalAttack] = {a.name: a for a in (
    EvalAttack("natural", "natural", "Natural", {}, doc="no attack"),
    EvalAttack("fgsm", "fgsm", "FGSM", {"eps": _EPS, "init": _INIT},
               doc="one step of size eps from a uniform random start"),
    EvalAttack("pgd", "pgd", "PGD", {
        "steps": fixed("int", default=20, lo=1, hi=100_000), "step_size": _STEP, "eps": _EPS,
        "restarts": _RESTARTS, "loss": fixed("choice", default="ce", choices=("ce", "cw")), "init": _INIT,
    }, steps_label=True, default_steps=20, doc="PGD-K on the cross-entropy, step eps/4"),
    EvalAttack("cw", "cw", "CW∞", {
        "steps": fixed("int", default=30, lo=1, hi=100_000), "step_size": _STEP, "eps": _EPS,
        "restarts": _RESTARTS, "confidence": fixed("num", default=50, lo=0), "init": _INIT,
    }, default_steps=30, doc="PGD on the CW margin loss with confidence 50"),
    EvalAttack("autoattack", "autoattack", "AA", {
        "eps": _EPS, "queries": fixed("int", default=5000, lo=1, hi=1_000_000), "n_targets": _TARGETS,
    }, doc="AutoAttack, standard version: APGD-CE, APGD-T, FAB-T, Square"),
    EvalAttack("square", "square", "Square", {
        "eps": _EPS, "queries": fixed("int", default=5000, lo=1, hi=1_000_000),
        "p_init": fixed("num", default=0.8, lo=0, lo_strict=True, hi=1),
    }, doc="the black-box Square attack (score-based)"),
    EvalAttack("apgd_ce", "apgd_ce", "APGD-CE", {
        "steps": fixed("int", default=100, lo=1, hi=100_000), "eps": _EPS, "restarts": _RESTARTS,
    }, default_steps=100, doc="AutoAttack's APGD on the cross-entropy"),
    EvalAttack("apgd_t", "apgd_t", "APGD-T", {
        "steps": fixed("int", default=100, lo=1, hi=100_000), "eps": _EPS, "n_targets": _TARGETS,
    }, default_steps=100, doc="AutoAttack's targeted APGD on the DLR loss"),
    EvalAttack("fab_t", "fab_t", "FAB-T", {
        "steps": fixed("int", default=100, lo=1, hi=100_000), "eps": _EPS, "n_targets": _TARGETS,
    }, default_steps=100, doc="AutoAttack's targeted FAB"),
)}  # fmt: skip

# the list `advc run` evaluates when a spec has no evaluate block
DEFAULT_EVALUATE = "natural pgd(steps = 20)"


def label(name: str, params: dict) -> str:
    """The column label of an attack with its (complete) parameters."""
    entry = ATTACKS[name]
    base = entry.base
    steps = params.get("steps")
    if entry.steps_label or (steps is not None and steps != entry.default_steps):
        base = f"{base}-{steps}"
    extras = []
    if params.get("eps") is not None:
        extras.append(f"ε={params['eps']:.4g}")
    if params.get("restarts", 1) != 1:
        extras.append(f"{params['restarts']} restarts")
    if name == "pgd" and params.get("loss", "ce") != "ce":
        extras.append(f"{params['loss']} loss")
    return f"{base} ({', '.join(extras)})" if extras else base
