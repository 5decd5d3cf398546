"""What the language's words mean: one torch-free table per concept, read by the checker and the runtime.

``clauses`` (threat models, training attacks, forms, weights, optimisers, the train block),
``datasets``, ``models``, ``evaluation`` (the attacks of the evaluate block) and ``quantities``
(loss terms, per-sample quantities, functions). Adding a data set, a model or an attack is one
entry in one of these tables: the checker validates against it, the code generator and the runtime
look the implementation up by the name the entry gives, and nothing else keeps a list.

Nothing here imports torch, so ``advc check`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Param:
    """One parameter of a clause head (``pgd(steps = ...)``) or a train setting: type, range, default.

    ``varies``: the value may follow the epoch (a schedule, or an expression of the epoch or of
    other settings that do); otherwise it must be one value for the whole run.
    """

    kind: str  # num | int | choice | str | bool | stop (a per-sample condition)
    required: bool = False
    default: object = None
    lo: float | None = None
    lo_strict: bool = False
    hi: float | None = None
    hi_strict: bool = False
    varies: bool = True
    choices: tuple[str, ...] = ()
    allow_inf: bool = False
    doc: str = ""

    def range_text(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_strict else '>='} {fmt_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_strict else '<='} {fmt_num(self.hi)}")
        return " and ".join(parts)

    def touching(self) -> Param:
        """The same range with its bounds allowed: what a per-step schedule may reach at single
        steps (a learning rate > 0 may start a warm-up at 0 or end a cycle there)."""
        return replace(self, lo_strict=False, hi_strict=False)

    def violated(self, v: float) -> bool:
        lo_bad = self.lo is not None and (v <= self.lo if self.lo_strict else v < self.lo)
        hi_bad = self.hi is not None and (v >= self.hi if self.hi_strict else v > self.hi)
        return lo_bad or hi_bad


def fmt_num(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def fixed(kind: str, **kw) -> Param:
    """A parameter that is one value for the whole run (no schedule)."""
    return Param(kind, varies=False, **kw)
