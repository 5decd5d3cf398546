"""What was run, canonically: every setting of a program as a flat record, and the hashes over it.

``settings_record`` writes a checked program as ``{"threat.eps": 0.031, "form.tau":
"piecewise(0: 0, 40: 3, 70: 6)", "train.lr": ..., "evaluate": "natural pgd(steps = 20)", ...}``:
numbers folded to their value where they are constant, the canonical text of a schedule or an
expression otherwise. Comments, formatting, file names, the order of clauses and how a value was
spelt (``eps / 4`` or ``0.0078``) do not change it. Two runs are one *experiment* when their
records agree on everything but the seed; ``--resume`` requires the *training* record (all but
``train.epochs`` and the evaluation) to agree.
"""

from __future__ import annotations

import hashlib
import json

from . import ir

# keys that do not change what training computes: a resume may change them
NOT_TRAINING = ("train.epochs", "evaluate")
# keys that are the replicate, not the experiment
REPLICATE = ("train.seed",)


def etext(e: ir.E) -> str:
    """Canonical text of a per-sample expression (fully parenthesised, so unambiguous)."""
    if isinstance(e, ir.EConst):
        return repr(e.value)
    if isinstance(e, ir.EVar):
        return e.name
    if isinstance(e, (ir.EQty, ir.ETerm)):
        name = e.name if isinstance(e, ir.EQty) else e.kind
        return f"{name}({', '.join(e.args)})" if e.args else name
    if isinstance(e, ir.ENeg):
        return f"-({etext(e.operand)})"
    if isinstance(e, ir.ENot):
        return f"not ({etext(e.operand)})"
    if isinstance(e, (ir.EBin, ir.ECmp, ir.EBool)):
        return f"({etext(e.left)} {e.op} {etext(e.right)})"
    if isinstance(e, ir.EFunc):
        return f"{e.fn}({', '.join(etext(a) for a in e.args)})"
    raise TypeError(e)  # pragma: no cover


def _value(s: ir.Setting | None):
    if s is None:
        return None
    return s.const if s.const is not None else s.text


def settings_record(p: ir.Program) -> dict[str, object]:
    """Every setting of ``p``: dotted key -> a JSON scalar."""
    a, f, w = p.attack, p.form, p.weight
    out: dict[str, object] = {
        "objective": p.name,
        "threat.norm": p.threat.norm, "threat.eps": _value(p.threat.eps),
        "attack.steps": _value(a.steps), "attack.step_size": _value(a.step_size), "attack.init": a.init,
        "attack.init_scale": a.init_scale, "attack.loss": a.loss, "attack.noise": _value(a.noise),
        "attack.confidence": a.confidence, "attack.mode": a.mode,
        "form": f.kind, "form.tau": _value(f.tau), "form.rho": _value(f.rho), "form.replay": f.replay,
        "form.stop": etext(f.stop) if f.stop is not None else None,
        "weight": w.kind, "weight.fn": w.fn, "weight.lambda": _value(w.lam), "weight.from_epoch": w.from_epoch,
        "weight.normalise": w.normalise, "weight.expr": etext(w.expr) if w.expr is not None else None,
        "loss": etext(p.loss.expr),
    }  # fmt: skip
    for b in (*f.bindings, *w.bindings, *p.loss.bindings):
        out[b.key] = _value(b)
    if p.perturb is not None:
        out.update({"perturb.gamma": p.perturb.gamma, "perturb.steps": p.perturb.steps, "perturb.lr": p.perturb.lr,
                    "perturb.from_epoch": p.perturb.from_epoch})
    t = p.train
    if t is not None:
        out.update({"train.data": t.data, "train.model": t.model, "train.epochs": t.epochs, "train.batch": t.batch,
                    "train.seed": t.seed, "train.optim": t.optim, "train.lr": _value(t.lr),
                    "train.precision": t.precision, "train.val": t.val, "train.augment": t.augment,
                    "train.sync_bn": t.sync_bn, "train.channels_last": t.channels_last, "train.compile": t.compile})
        if t.guard is not None:
            out.update({"train.guard.steps": t.guard.steps, "train.guard.step_size": t.guard.step_size,
                        "train.guard.drop": t.guard.drop})
        out.update({f"train.data.{k}": v for k, v in t.data_args if k not in ("root", "download")})
        out.update({f"train.model.{k}": v for k, v in t.model_args})
        out.update({f"train.optim.{k}": _value(v) if isinstance(v, ir.Setting) else v for k, v in t.optim_args})
    out["evaluate"] = " ".join(e.label for e in p.evaluate)
    return {k: v for k, v in out.items() if v is not None}


def digest(record: dict[str, object], drop: tuple[str, ...] = ()) -> str:
    """sha256 of the record without ``drop`` (keys sorted, numbers as JSON writes them)."""
    kept = {k: v for k, v in record.items() if k not in drop}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def training_id(p: ir.Program) -> str:
    """Identity of what training computes: --resume requires it to be unchanged."""
    return digest(settings_record(p), NOT_TRAINING)
