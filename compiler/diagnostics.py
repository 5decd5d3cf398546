"""Diagnostics: every problem in a spec is data first (a ``Diagnostic``), text second.

Detection (parser, checker, overrides) appends diagnostics; ``render`` turns them into the
Rust/Elm-style text the user reads::

    specs/gair_fat.adv:7:13: error: unknown attack 'pgdd'
      7 |     attack  pgdd(steps = 10, step_size = 2/255)
        |             ^^^^ did you mean 'pgd'?

``SpecError`` carries all diagnostics of one check at once; the CLI prints them and exits 2.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from advc.errors import AdvcError


@dataclass(frozen=True)
class Span:
    """A region of a source: 1-based line/column of its first and one-past-last character."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __repr__(self) -> str:  # short, so AST dumps stay readable
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None
    hint: str | None = None
    severity: str = "error"  # error | warning
    code: str | None = None  # warnings have a name, to silence them (--allow NAME)

    @property
    def label(self) -> str:
        return f"{self.severity}[{self.code}]" if self.code else self.severity


@dataclass
class Sources:
    """The text of every file a check read, so diagnostics can quote the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            return None
        lines = text.split("\n")  # lark counts lines by '\n' only; so must the quote
        if 1 <= line <= len(lines):
            return lines[line - 1].rstrip("\r")
        return ""


def render_one(diag: Diagnostic, sources: Sources | None = None) -> str:
    """``file:line:col: error: message``, then the source line with a caret under the span."""
    if diag.span is None:
        head = f"{diag.label}: {diag.message}"
        return head + (f"\n  hint: {diag.hint}" if diag.hint else "")
    span = diag.span
    head = f"{span.file}:{span.line}:{span.col}: {diag.label}: {diag.message}"
    text = sources.line(span.file, span.line) if sources else None
    if text is None:
        return head + (f"\n  hint: {diag.hint}" if diag.hint else "")
    text = "".join(ch if ch.isprintable() else " " for ch in text.expandtabs(1))
    gutter = str(span.line)
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    else:
        width = max(1, len(text) - span.col + 1)
    width = max(1, min(width, max(1, len(text) - span.col + 1)))
    caret = " " * (span.col - 1) + "^" * width
    pad = " " * len(gutter)
    out = [head, f"  {gutter} | {text}", f"  {pad} | {caret}" + (f" {diag.hint}" if diag.hint else "")]
    return "\n".join(out)


def render(diags: list[Diagnostic], sources: Sources | None = None) -> str:
    return "\n".join(render_one(d, sources) for d in diags)


class SpecError(AdvcError):
    """One or more problems in a spec (or in the overrides applied to it)."""

    exit_code = 2

    def __init__(self, diagnostics: list[Diagnostic], sources: Sources | None = None):
        self.diagnostics = list(diagnostics)
        self.sources = sources or Sources()
        super().__init__(self.render())

    def render(self) -> str:
        return render(self.diagnostics, self.sources)


class Reporter:
    """Collects the diagnostics of one check: every problem at once, in source order."""

    def __init__(self, sources: Sources | None = None):
        self.diags: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.sources = sources or Sources()

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(message, span, hint))

    def warn(self, code: str, message: str, span: Span | None, hint: str | None = None) -> None:
        self.warnings.append(Diagnostic(message, span, hint, severity="warning", code=code))

    def extend(self, err: SpecError) -> None:
        self.diags.extend(err.diagnostics)
        self.sources.texts.update(err.sources.texts)

    def fail_if_errors(self) -> None:
        if self.diags:
            raise SpecError(_in_order(self.diags), self.sources)


def _in_order(diags: list[Diagnostic]) -> list[Diagnostic]:
    """One diagnostic per problem, in source order."""

    def key(d: Diagnostic):
        s = d.span
        return (s.file, s.line, s.col) if s else ("", 0, 0)

    seen, unique = set(), []
    for d in sorted(diags, key=key):
        k = (d.message, d.span)
        if k not in seen:
            seen.add(k)
            unique.append(d)
    return unique


def did_you_mean(word: str, choices) -> str | None:
    """``did you mean 'pgd'?`` for the closest known name, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def one_of(choices) -> str:
    names = sorted(choices)
    if len(names) == 1:
        return f"'{names[0]}'"
    return ", ".join(f"'{n}'" for n in names[:-1]) + f" or '{names[-1]}'"
