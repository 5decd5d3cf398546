"""Stage 1: source text -> syntax tree (``compiler.ast``), or diagnostics.

The grammar lives in ``grammar/advc.lark``; lark's LALR parser applies the tree builder
below while it parses (no recursion, so deeply nested input cannot overflow the stack).
Every failure -- bad bytes, bad characters, unexpected tokens, absurd nesting -- becomes a
``SpecError`` with a location; nothing else escapes ``parse_text``.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

from . import ast
from .diagnostics import Diagnostic, Sources, Span, SpecError

MAX_DEPTH = 64  # nesting of expressions; real specs use fewer than 6
MAX_BYTES = 256 * 1024  # real specs are a few KB; this bounds the worst parse to ~2 s

_FRIENDLY = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_WHERE": "'where'",
    "_AND": "'and'",
    "_OR": "'or'",
    "_NOT": "'not'",
    "COMPARE": "a comparison",
    "$END": "end of file",
}


def _grammar_text() -> str:
    return resources.files("advc.grammar").joinpath("advc.lark").read_text(encoding="utf-8")


class _Builder(Transformer):
    """Builds ``compiler.ast`` nodes bottom-up; ``file`` names the source in every span."""

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file
        self.depth: dict[int, int] = {}

    # spans ---------------------------------------------------------------------------
    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok: Token) -> Span:
        return Span(self.file, tok.line, tok.column, tok.end_line, tok.end_column)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._tok_span(tok))

    def _nest(self, node, *children):
        depth = 1 + max((self.depth.get(id(c), 0) for c in children), default=0)
        if depth > MAX_DEPTH:
            raise _TooDeep(node.span)
        self.depth[id(node)] = depth
        return node

    # structure -----------------------------------------------------------------------
    @v_args(meta=True)
    def start(self, meta, items):
        return list(items)

    def expr_start(self, children):
        return children[0]

    def clause_start(self, children):
        value, *where = children
        return ast.ClauseValue(value, tuple(b for b in where if b is not None))

    def eval_start(self, children):
        return tuple(children)

    @v_args(meta=True)
    def objective(self, meta, children):
        name, parent, *clauses = children
        if isinstance(parent, ast.Name):  # `extends fat`: keep it an identifier with its span
            parent = ast.Ident(parent.id, parent.span)
        return ast.Objective(self._ident(name), parent, tuple(clauses), span=self._span(meta))

    @v_args(meta=True)
    def train(self, meta, clauses):
        return ast.Train(tuple(clauses), span=self._span(meta))

    @v_args(meta=True)
    def evaluate(self, meta, attacks):
        return ast.Evaluate(tuple(attacks), span=self._span(meta))

    @v_args(meta=True)
    def clause(self, meta, children):
        key, value, *where = children
        bindings = tuple(b for b in where if b is not None)
        return ast.Clause(self._ident(key), value, bindings, span=self._span(meta))

    @v_args(meta=True)
    def binding(self, meta, children):
        name, value = children
        return ast.Binding(self._ident(name), value, span=self._span(meta))

    # expressions ---------------------------------------------------------------------
    @v_args(meta=True)
    def number(self, meta, children):
        return ast.Num(str(children[0]), span=self._tok_span(children[0]))

    @v_args(meta=True)
    def string(self, meta, children):
        return ast.Str(str(children[0])[1:-1], span=self._tok_span(children[0]))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), span=self._tok_span(children[0]))

    def _binop(op):
        @v_args(meta=True)
        def method(self, meta, children):
            left, right = children
            return self._nest(ast.BinOp(op, left, right, span=self._span(meta)), left, right)

        return method

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    div = _binop("/")
    pow = _binop("^")

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return self._nest(ast.Compare(str(op), left, right, span=self._span(meta)), left, right)

    def _boolop(op):
        @v_args(meta=True)
        def method(self, meta, children):
            left, right = children
            return self._nest(ast.BoolOp(op, left, right, span=self._span(meta)), left, right)

        return method

    and_ = _boolop("and")
    or_ = _boolop("or")

    @v_args(meta=True)
    def not_(self, meta, children):
        return self._nest(ast.Not(children[0], span=self._span(meta)), children[0])

    @v_args(meta=True)
    def neg(self, meta, children):
        return self._nest(ast.Neg(children[0], span=self._span(meta)), children[0])

    @v_args(meta=True)
    def call(self, meta, children):
        func, *args = children
        args = tuple(a for a in args if a is not None)
        node = ast.Call(self._ident(func), args, span=self._span(meta))
        return self._nest(node, *args)

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        node = ast.KwArg(self._ident(name), value, span=self._span(meta))
        return self._nest(node, value)

    @v_args(meta=True)
    def pair(self, meta, children):
        key, value = children
        return self._nest(ast.Pair(key, value, span=self._span(meta)), key, value)


class _TooDeep(Exception):
    def __init__(self, span):
        self.span = span


_STARTS = ["start", "expr_start", "clause_start", "eval_start"]


@functools.cache
def _parser() -> Lark:
    """One LALR parser for the four entry points: building the tables is most of what `advc
    check` spends before it reads a spec, so it is done once."""
    return Lark(
        _grammar_text(),
        parser="lalr",
        start=_STARTS,
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _describe_expected(parser: Lark, names) -> str:
    words = []
    for name in sorted(set(names)):
        if name in _FRIENDLY:
            words.append(_FRIENDLY[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:  # pragma: no cover
            words.append(name)
            continue
        words.append(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    words = sorted(set(words))
    if len(words) > 6:
        return ", ".join(words[:6]) + ", ..."
    return " or ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " or " + words[-1]


def _tok_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    return f"'{text[:40]}'" + ("..." if len(text) > 40 else "")


def _parse_error(exc: LarkError, parser: Lark, file: str, text: str) -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        span = Span(file, exc.line, exc.column, exc.line, exc.column + 1)
        if ch == '"':
            hint = "strings are one line of plain text with no backslashes"
        else:
            # the lexer's view of what may follow is coarse, so say what the language is made of
            hint = "specs are made of names, numbers, \"strings\", ( ) { } , = : + - * / ^ < > and # comments"
        return Diagnostic(f"unexpected character {ch!r}", span, hint)
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        expected = exc.accepts or exc.expected
        if tok.type == "$END":
            line = text.count("\n") + 1
            last = text.rsplit("\n", 1)[-1]
            span = Span(file, line, len(last) + 1, line, len(last) + 2)
            hint = f"expected {_describe_expected(parser, expected)}"
            if "RBRACE" in expected:
                hint = "a block is not closed: add '}'"
            return Diagnostic("unexpected end of file", span, hint)
        span = Span(file, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)
        return Diagnostic(
            f"unexpected {_tok_text(tok)}", span, f"expected {_describe_expected(parser, expected)}"
        )
    if isinstance(exc, UnexpectedEOF):  # pragma: no cover - LALR reports UnexpectedToken($END)
        return Diagnostic("unexpected end of file", Span(file, 1, 1, 1, 2))
    return Diagnostic(f"cannot parse: {exc}", Span(file, 1, 1, 1, 2))  # pragma: no cover


def decode(data: bytes, file: str, size: int | None = None) -> str:
    """UTF-8 text of a spec, or a diagnostic pointing at the first undecodable byte. ``size``:
    the file's size when ``data`` is only its first MAX_BYTES + 1 bytes (0: not known)."""
    if len(data) > MAX_BYTES:
        first = data[:120].split(b"\n", 1)[0].decode("utf-8", errors="replace")
        size = len(data) if size is None else size
        how_big = f"{size} bytes" if size > MAX_BYTES else f"more than {MAX_BYTES} bytes"
        raise SpecError(
            [Diagnostic(f"spec is {how_big}; the limit is {MAX_BYTES}", Span(file, 1, 1, 1, 2),
                        "a spec is a few KB; is this the right file?")],
            Sources({file: first}),
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is not content
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        col = len(before.rsplit("\n", 1)[-1]) + 1
        diag = Diagnostic(
            f"spec is not valid UTF-8 (byte 0x{data[exc.start]:02x})",
            Span(file, line, col, line, col + 1),
            "save the file as UTF-8",
        )
        raise SpecError([diag], Sources({file: before})) from None


def _run(text: str, file: str, start: str):
    parser = _parser()
    builder = _Builder(file)
    sources = Sources({file: text})
    try:
        tree = parser.parse(text, start=start)
        result = builder.transform(tree)
    except LarkError as exc:
        inner = getattr(exc, "orig_exc", None)
        if isinstance(inner, _TooDeep):
            raise SpecError([_too_deep(inner.span, file)], sources) from None
        raise SpecError([_parse_error(exc, parser, file, text)], sources) from None
    except _TooDeep as exc:
        raise SpecError([_too_deep(exc.span, file)], sources) from None
    except RecursionError:
        raise SpecError([_too_deep(None, file)], sources) from None
    return result, sources


def _too_deep(span, file):
    return Diagnostic(
        f"expression nested more than {MAX_DEPTH} levels deep",
        span or Span(file, 1, 1, 1, 2),
        "split it up; real objectives need only a few levels",
    )


def _comments(text: str) -> tuple[ast.Comment, ...]:
    """Every ``# ...`` comment with its position (strings are one line and may hold '#')."""
    out = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        in_string = False
        for col, ch in enumerate(line, start=1):
            if ch == '"':
                in_string = not in_string
            elif ch == "#" and not in_string:
                out.append(ast.Comment(lineno, col, line[col - 1 :].rstrip(" \t\r")))
                break
    return tuple(out)


def parse_text(text: str, file: str = "<spec>") -> ast.Spec:
    """Parse a whole spec. Raises ``SpecError`` (and nothing else) on bad input."""
    if "\x00" in text:
        idx = text.index("\x00")
        line = text.count("\n", 0, idx) + 1
        col = idx - (text.rfind("\n", 0, idx) + 1) + 1
        raise SpecError(
            [Diagnostic("spec contains a NUL byte", Span(file, line, col, line, col + 1), "is this a binary file?")],
            Sources({file: text}),
        )
    items, _ = _run(text, file, "start")
    return ast.Spec(file, tuple(items), _comments(text), text)


def parse_expr(text: str, file: str = "<expr>") -> ast.Expr:
    """Parse one expression (the value of a ``--set section.param=value`` override)."""
    if text.strip() == "":
        raise SpecError([Diagnostic("empty value", Span(file, 1, 1, 1, 2), "write a number, name or call")])
    expr, _ = _run(text, file, "expr_start")
    return expr


def parse_clause_value(text: str, file: str = "<expr>") -> ast.ClauseValue:
    """Parse a whole clause's value with its bindings: ``--set 'weight=exp(-margin / T) where T = 2'``."""
    if text.strip() == "":
        raise SpecError([Diagnostic("empty value", Span(file, 1, 1, 1, 2), "write the clause's value")])
    value, _ = _run(text, file, "clause_start")
    return value


def parse_eval_list(text: str, file: str = "<expr>") -> tuple[ast.Expr, ...]:
    """Parse an evaluation list written as in an ``evaluate`` block: ``natural pgd(steps = 20)``."""
    items, _ = _run(text, file, "eval_start")
    return items


def read_spec(path: str | Path) -> ast.Spec:
    path = Path(path)
    try:
        with path.open("rb") as f:  # bounded: /dev/zero or a huge file cannot make advc read forever
            data = f.read(MAX_BYTES + 1)
            size = os.fstat(f.fileno()).st_size if len(data) > MAX_BYTES else None
    except FileNotFoundError:
        raise SpecError([Diagnostic(f"no such spec file: {path}", None, "check the path")]) from None
    except IsADirectoryError:
        raise SpecError([Diagnostic(f"{path} is a folder, not a spec file", None)]) from None
    except OSError as exc:
        raise SpecError([Diagnostic(f"cannot read {path}: {exc.strerror}", None)]) from None
    return parse_text(decode(data, str(path), size), str(path))
