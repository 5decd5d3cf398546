"""The advc syntax tree: frozen dataclasses, each carrying the source span it came from.

Spans never take part in equality (``compare=False``), so two trees are equal exactly when
they say the same thing -- which is what ``parse(fmt(s)) == parse(s)`` checks.
Parentheses are not nodes: the formatter re-derives them from operator precedence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span

_span = dict(compare=False, repr=False)


@dataclass(frozen=True)
class Ident:
    """A name as written, with its own span (for carets under exactly that name)."""

    name: str
    span: Span | None = field(default=None, **_span)


# --- expressions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    text: str  # as written, so `8/255` and `2e-4` survive formatting
    span: Span | None = field(default=None, **_span)

    @property
    def value(self) -> float | int:
        if any(c in self.text for c in ".eE") or len(self.text) > 18:
            return float(self.text)  # huge literals overflow to inf, which the checker rejects
        return int(self.text)


@dataclass(frozen=True)
class Str:
    value: str
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Name:
    id: str
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / ^
    left: Expr
    right: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Compare:
    op: str  # one of < <= > >= == !=
    left: Expr
    right: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    left: Expr
    right: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Not:
    operand: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class KwArg:
    name: Ident
    value: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Pair:
    key: Expr
    value: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Call:
    func: Ident
    args: tuple[Arg, ...]
    span: Span | None = field(default=None, **_span)

    def kwargs(self) -> dict[str, KwArg]:
        return {a.name.name: a for a in self.args if isinstance(a, KwArg)}


Expr = Num | Str | Name | BinOp | Neg | Call | Compare | BoolOp | Not
Arg = Expr | KwArg | Pair


# --- structure --------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    name: Ident
    value: Expr
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Clause:
    """``key value [where name = value, ...]`` -- one line of a block."""

    key: Ident
    value: Expr
    where: tuple[Binding, ...] = ()
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Objective:
    name: Ident
    parent: Ident | Str | None  # `extends fat` (a name to look up) or `extends "lib/fat.adv"` (a file)
    clauses: tuple[Clause, ...]
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Train:
    clauses: tuple[Clause, ...]
    span: Span | None = field(default=None, **_span)


@dataclass(frozen=True)
class Evaluate:
    attacks: tuple[Expr, ...]
    span: Span | None = field(default=None, **_span)


Item = Objective | Train | Evaluate


@dataclass(frozen=True)
class ClauseValue:
    """The value of a whole clause given on the command line: ``--set 'weight=... where T = 2'``."""

    value: Expr
    where: tuple[Binding, ...] = ()


@dataclass(frozen=True)
class Comment:
    line: int
    col: int
    text: str


@dataclass(frozen=True)
class Spec:
    file: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)
    source: str = field(default="", compare=False, repr=False)

    def objectives(self) -> list[Objective]:
        return [i for i in self.items if isinstance(i, Objective)]

    def block(self, kind: type) -> Item | None:
        found = [i for i in self.items if isinstance(i, kind)]
        return found[-1] if found else None


def spans_of(node) -> Span | None:
    return getattr(node, "span", None)
