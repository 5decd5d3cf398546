"""``advc fmt``: the canonical text of a spec, comments kept, idempotent.

One clause per line, four-space indent, clause keys padded to one column, a blank line
between blocks (and where the author left one between clauses), parentheses only where
precedence needs them. Comments stay with the element they precede or follow on its line.
"""

from __future__ import annotations

from . import ast
from .parse import parse_text

# as the grammar nests them: or < and < not < comparisons < + - < * / < unary minus < ^ < atoms
_PREC = {"or": -3, "and": -2, "+": 1, "-": 1, "*": 2, "/": 2, "^": 4}
_NOT, _COMPARE = -1, 0
_ATOM = 5


def _prec(e) -> int:
    if isinstance(e, (ast.BinOp, ast.BoolOp)):
        return _PREC[e.op]
    if isinstance(e, ast.Compare):
        return _COMPARE
    if isinstance(e, ast.Not):
        return _NOT
    if isinstance(e, ast.Neg):
        return 3
    return _ATOM


def _paren(e, below: int) -> str:
    """``e`` in parentheses when it binds looser than ``below`` allows."""
    text = expr(e)
    return f"({text})" if _prec(e) < below else text


def expr(e) -> str:
    """An expression in canonical form; re-parsing it gives an equal tree."""
    if isinstance(e, ast.Num):
        return e.text
    if isinstance(e, ast.Str):
        return f'"{e.value}"'
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Neg):
        inner = expr(e.operand)
        return f"-({inner})" if _prec(e.operand) < 4 and not isinstance(e.operand, ast.Num) else f"-{inner}"
    if isinstance(e, ast.BinOp):
        p = _PREC[e.op]
        left, right = expr(e.left), expr(e.right)
        if e.op == "^":
            if _prec(e.left) != _ATOM:
                left = f"({left})"
            if _prec(e.right) < 3:
                right = f"({right})"
            return f"{left}^{right}"
        if _prec(e.left) < p:
            left = f"({left})"
        if _prec(e.right) <= p:
            right = f"({right})"
        if e.op == "/" and isinstance(e.left, ast.Num) and isinstance(e.right, ast.Num):
            return f"{left}/{right}"
        return f"{left} {e.op} {right}"
    if isinstance(e, ast.Compare):  # comparisons do not chain: both sides are sums
        return f"{_paren(e.left, 1)} {e.op} {_paren(e.right, 1)}"
    if isinstance(e, ast.BoolOp):  # left-associative
        p = _PREC[e.op]
        return f"{_paren(e.left, p)} {e.op} {_paren(e.right, p + 1)}"
    if isinstance(e, ast.Not):
        return f"not {_paren(e.operand, _NOT)}"
    if isinstance(e, ast.Call):
        return f"{e.func.name}({', '.join(arg(a) for a in e.args)})"
    raise TypeError(f"not an expression: {e!r}")  # pragma: no cover


def arg(a) -> str:
    if isinstance(a, ast.KwArg):
        return f"{a.name.name} = {expr(a.value)}"
    if isinstance(a, ast.Pair):
        return f"{expr(a.key)}: {expr(a.value)}"
    return expr(a)


def clause(c: ast.Clause) -> str:
    text = f"{c.key.name.ljust(7)} {expr(c.value)}"
    if c.where:
        text += " where " + ", ".join(f"{b.name.name} = {expr(b.value)}" for b in c.where)
    return text


class _Printer:
    def __init__(self, spec: ast.Spec):
        self.lines: list[str] = []
        self.comments = sorted(spec.comments, key=lambda c: (c.line, c.col))
        self.source_lines = spec.source.split("\n")
        self.next = 0

    def _pending_before(self, line: int) -> list[ast.Comment]:
        out = []
        while self.next < len(self.comments) and self.comments[self.next].line < line:
            out.append(self.comments[self.next])
            self.next += 1
        return out

    def _trailing(self, first: int, last: int) -> str:
        out = []
        while self.next < len(self.comments) and first <= self.comments[self.next].line <= last:
            out.append(self.comments[self.next].text)
            self.next += 1
        return ("  " + " ".join(out)) if out else ""

    def _blank_between(self, prev_end: int | None, start: int) -> bool:
        if prev_end is None:
            return False
        between = self.source_lines[prev_end:start - 1]
        return any(not line.strip() for line in between)

    def emit(self, text: str, span, indent: str, prev_end: int | None) -> int:
        start = span.line if span else 0
        end = span.end_line if span else 0
        lead = self._pending_before(start)
        if self._blank_between(prev_end, lead[0].line if lead else start) and self.lines and self.lines[-1] != "":
            self.lines.append("")
        for i, c in enumerate(lead):
            if i and c.line > lead[i - 1].line + 1 and self.lines[-1] != "":
                self.lines.append("")
            self.lines.append(indent + c.text)
        if lead and self._blank_between(lead[-1].line, start) and self.lines[-1] != "":
            self.lines.append("")
        self.lines.append(indent + text + self._trailing(start, end))
        return end

    def block(self, header: str, item, elements: list[tuple[str, object]]) -> None:
        span = item.span
        first_line = span.line if span else 0
        self.emit(header + " {", _line_span(span, first_line), "", None)
        prev = first_line
        for text, node in elements:
            prev = self.emit(text, node.span, "    ", prev)
        close = span.end_line if span else prev
        for c in self._pending_before(close):
            self.lines.append("    " + c.text)
        self.lines.append("}" + self._trailing(close, close))

    def spec(self, spec: ast.Spec) -> str:
        for i, item in enumerate(spec.items):
            if i:
                self.lines.append("")
            if isinstance(item, ast.Objective):
                header = f"objective {item.name.name}"
                if isinstance(item.parent, ast.Str):
                    header += f' extends "{item.parent.value}"'
                elif item.parent is not None:
                    header += f" extends {item.parent.name}"
                self.block(header, item, [(clause(c), c) for c in item.clauses])
            elif isinstance(item, ast.Train):
                self.block("train", item, [(clause(c), c) for c in item.clauses])
            else:
                self.block("evaluate", item, [(expr(a), a) for a in item.attacks])
        rest = self.comments[self.next:]
        if rest:
            if self.lines:
                self.lines.append("")
            self.lines.extend(c.text for c in rest)
        return "\n".join(self.lines) + "\n" if self.lines else ""


def _line_span(span, line):
    from .diagnostics import Span

    if span is None:
        return None
    return Span(span.file, line, 1, line, 1)


def format_spec(spec: ast.Spec) -> str:
    return _Printer(spec).spec(spec)


def format_text(text: str, file: str = "<spec>") -> str:
    return format_spec(parse_text(text, file))
