"""Laws of the front end, checked on generated input (hypothesis).

* The formatter is faithful: for any spec, ``parse(fmt(s)) == parse(s)`` (spans aside),
  ``fmt(fmt(s)) == fmt(s)``, and every comment's text survives.
* The parser and checker are total: on any text at all -- random, or a real spec with tokens
  deleted, duplicated, swapped or replaced -- they return or raise ``SpecError``, never another
  exception, and every diagnostic points inside the file it names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advc.compiler.check import check_text
from advc.compiler.diagnostics import SpecError
from advc.compiler.fmt import format_text
from advc.compiler.parse import parse_text

ROOT = Path(__file__).resolve().parents[2]
SPECS = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.adv"))}

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- a generator of syntactically valid specs ---------------------------------------------------

# cheap to draw (regex strategies are slow): a pool of names, some of them near the keywords
# (names starting with "where" are covered by a regression test at the end of this file)
NAMES = [
    "a", "b", "x", "K", "e", "E", "kappa", "lambda", "inf", "true", "nat", "adv", "pgd", "ce", "_",
    "_x1", "eps", "step_size", "objectives", "trains", "extend", "here", "Evaluate", "x9", "tau",
]  # fmt: skip
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES).map(lambda n: n + "_2"))
NUMBERS = ["0", "1", "10", "255", "8", "0.5", ".5", "1.", "2e-4", "1E+3", "0.031", "007", "1.5e2"]
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(0, 10**6).map(str))
# one line of text: no control characters, no line or paragraph separators
line_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
strings = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters='"\\'), max_size=12
).map(lambda s: f'"{s}"')
comments = line_text.map(lambda s: ("# " + s).rstrip())


GAP_KIND = st.sampled_from(["none", "space", "space", "space", "newline", "comment"])
NEWLINES = st.sampled_from(["\n", "\n\n", "\n    ", "\t\n  "])
SPACES = st.sampled_from([" ", "  ", "\t"])
BEFORE_COMMENT = st.sampled_from([" ", "  ", ""])
AFTER_COMMENT = st.sampled_from(["", "    "])


@st.composite
def gaps(draw, required: bool = False):
    """Whitespace between two tokens: nothing, spaces, newlines, or a comment and a newline."""
    kind = draw(GAP_KIND)
    if kind == "none" and not required:
        return ""
    if kind == "newline":
        return draw(NEWLINES)
    if kind == "comment":
        return draw(BEFORE_COMMENT) + draw(comments) + "\n" + draw(AFTER_COMMENT)
    return draw(SPACES)


GAP, GAP1 = gaps(), gaps(required=True)  # strategies are built once: drawing is the slow part


def spaced(draw, *tokens: str) -> str:
    """Join tokens with random gaps; a gap is never empty between two word characters."""
    out = tokens[0]
    for tok in tokens[1:]:
        need = (out[-1:].isalnum() or out[-1:] in "_.") and (tok[:1].isalnum() or tok[:1] in "_.")
        out += draw(GAP1 if need else GAP) + tok
    return out


ATOMS = st.one_of(numbers, names, numbers, names, strings)
EXPR_KIND = st.sampled_from(["binop", "binop", "neg", "paren", "call", "compare", "bool", "not"])
OPERATORS = st.sampled_from(["+", "-", "*", "/", "^"])
COMPARISONS = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
CONNECTIVES = st.sampled_from(["and", "or"])
ARG_FORM = st.sampled_from(["plain", "kwarg", "pair"])
LEAF = st.integers(0, 3)
ARG_COUNT = st.integers(0, 3)


@st.composite
def _expressions(draw, depth: int) -> str:
    """Random arithmetic over numbers, names, strings and calls, with random parentheses."""
    if depth <= 0 or draw(LEAF) == 0:
        return draw(ATOMS)
    kind = draw(EXPR_KIND)
    sub = EXPRESSIONS[depth - 1]
    if kind == "binop":
        return spaced(draw, draw(sub), draw(OPERATORS), draw(sub))
    if kind == "neg":
        return spaced(draw, "-", draw(sub))
    if kind == "paren":
        return spaced(draw, "(", draw(sub), ")")
    # conditions (stop rules) bind looser than arithmetic: parenthesised, they fit anywhere, and
    # the formatter decides which parentheses stay
    if kind == "compare":
        return spaced(draw, "(", draw(sub), draw(COMPARISONS), draw(sub), ")")
    if kind == "bool":
        return spaced(draw, "(", draw(sub), draw(CONNECTIVES), draw(sub), ")")
    if kind == "not":
        return spaced(draw, "(", "not", draw(sub), ")")
    return draw(CALLS[depth - 1])


@st.composite
def _calls(draw, depth: int) -> str:
    """``f(a, k = v, 0: x)`` -- positional arguments, keyword arguments and pairs."""
    sub = EXPRESSIONS[depth]
    args = []
    for _ in range(draw(ARG_COUNT)):
        form = draw(ARG_FORM)
        if form == "plain":
            args.append(draw(sub))
        elif form == "kwarg":
            args.append(spaced(draw, draw(names), "=", draw(sub)))
        else:
            args.append(spaced(draw, draw(sub), ":", draw(sub)))
    tokens = [draw(names), "("]
    for i, a in enumerate(args):
        tokens += ([","] if i else []) + [a]
    if args and draw(st.booleans()):
        tokens.append(",")  # a trailing comma is allowed
    tokens.append(")")
    return spaced(draw, *tokens)


EXPRESSIONS: dict[int, st.SearchStrategy[str]] = {}
CALLS: dict[int, st.SearchStrategy[str]] = {}
for _depth in range(4):
    EXPRESSIONS[_depth] = _expressions(_depth)
    CALLS[_depth] = _calls(_depth)
BINDINGS = st.lists(st.tuples(names, EXPRESSIONS[2]), max_size=3)


@st.composite
def clauses(draw) -> str:
    tokens = [draw(names), draw(EXPRESSIONS[3])]
    for i, (name, value) in enumerate(draw(BINDINGS)):
        tokens += (["where"] if i == 0 else [","]) + [name, "=", value]
    return spaced(draw, *tokens)


BLOCK_KIND = st.sampled_from(["objective", "objective", "train", "evaluate"])
OBJECTIVE_BODY = st.lists(clauses(), max_size=5)
TRAIN_BODY = st.lists(clauses(), max_size=4)
# evaluation attacks are names and calls: the grammar allows nothing else there (see the
# regression test at the end of this file)
EVALUATE_BODY = st.lists(st.one_of(names, CALLS[1]), max_size=4)


@st.composite
def blocks(draw) -> str:
    kind = draw(BLOCK_KIND)
    if kind == "objective":
        parent = draw(st.sampled_from(["", "name", "file"]))
        head = ["objective", draw(names)] + (["extends", draw(names) if parent == "name" else draw(strings)]
                                             if parent else [])
        body = draw(OBJECTIVE_BODY)
    elif kind == "train":
        head, body = ["train"], draw(TRAIN_BODY)
    else:
        head, body = ["evaluate"], draw(EVALUATE_BODY)
    return spaced(draw, *head, "{", *body, "}")


ITEMS = st.lists(blocks(), max_size=4)


@st.composite
def specs(draw) -> str:
    text = draw(GAP) + "".join(item + draw(GAP1) for item in draw(ITEMS))
    if draw(st.booleans()):
        text += draw(comments) + "\n"
    return text


def _comment_texts(text: str) -> list[str]:
    return [c.text for c in parse_text(text).comments]


@PROPERTY
@given(specs())
def test_formatting_keeps_the_syntax_tree(text):
    formatted = format_text(text)
    assert parse_text(formatted) == parse_text(text)


@PROPERTY
@given(specs())
def test_formatting_is_idempotent(text):
    formatted = format_text(text)
    assert format_text(formatted) == formatted


@PROPERTY
@given(specs())
def test_formatting_loses_no_comment(text):
    formatted = format_text(text)
    for comment in _comment_texts(text):
        assert comment in formatted
    assert len(_comment_texts(formatted)) <= len(_comment_texts(text))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_real_specs_are_formatted_and_survive_formatting(name):
    text = SPECS[name]
    assert format_text(text) == text
    assert parse_text(format_text(text)) == parse_text(text)


# --- totality: any text gives a result or a SpecError ---------------------------------------------


def _assert_only_spec_errors(run, text: str, file: str):
    try:
        run(text, file)
    except SpecError as err:
        assert err.diagnostics, "a SpecError without diagnostics"
        for diag in err.diagnostics:
            if diag.span is None:
                continue
            source = err.sources.texts.get(diag.span.file, text if diag.span.file == file else None)
            assert source is not None, f"diagnostic names {diag.span.file}, whose text was not kept"
            lines = source.split("\n")
            assert 1 <= diag.span.line <= len(source.splitlines()) + 1, diag
            assert 1 <= diag.span.col <= len(lines[diag.span.line - 1]) + 1, diag
        err.render()  # rendering never fails either


TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][+-]?\d+)?|#[^\n]*|.", re.DOTALL)
VOCABULARY = [
    "objective", "extends", "train", "evaluate", "where", "{", "}", "(", ")", ",", "=", ":", "-", "+",
    "*", "/", "^", "#", '"', "\n", "pgd", "kappa", "weight", "piecewise", "0", "1.5", "-1", "1e9", "inf",
    "\x00", "\ufeff", "é", "\r", "\t", "adv", "nat", "loss", "ce(adv)", "linear(0: 1)",
]  # fmt: skip


@st.composite
def mutated_specs(draw) -> tuple[str, str]:
    """A real spec with one to four token-level or character-level edits."""
    name = draw(st.sampled_from(sorted(SPECS)))
    tokens = TOKEN.findall(SPECS[name])
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "char"]))
        if edit == "delete":
            del tokens[i : i + draw(st.integers(1, 3))]
        elif edit == "duplicate":
            tokens[i:i] = tokens[i : i + draw(st.integers(1, 3))]
        elif edit == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif edit == "replace":
            tokens[i] = draw(st.sampled_from(VOCABULARY))
        elif edit == "insert":
            tokens.insert(i, draw(st.sampled_from(VOCABULARY)))
        else:  # one character of one token
            tok = tokens[i]
            k = draw(st.integers(0, len(tok)))
            tokens[i] = tok[:k] + draw(st.characters()) + tok[k + 1 :]
    return name, "".join(tokens)


@PROPERTY
@given(st.text(max_size=300))
def test_parse_of_any_text_raises_only_spec_errors(text):
    _assert_only_spec_errors(parse_text, text, "any.adv")


@PROPERTY
@given(st.text(max_size=300))
def test_check_of_any_text_raises_only_spec_errors(text):
    _assert_only_spec_errors(check_text, text, str(ROOT / "specs" / "any.adv"))


@PROPERTY
@given(mutated_specs())
def test_parse_of_a_mutated_spec_raises_only_spec_errors(case):
    name, text = case
    _assert_only_spec_errors(parse_text, text, name)


@PROPERTY
@given(mutated_specs())
def test_check_of_a_mutated_spec_raises_only_spec_errors(case):
    # named as if it sat in specs/, so `extends madry` resolves against the real parents
    name, text = case
    _assert_only_spec_errors(check_text, text, str(ROOT / "specs" / name))


@PROPERTY
@given(specs())
def test_check_of_a_generated_spec_raises_only_spec_errors(text):
    _assert_only_spec_errors(check_text, text, str(ROOT / "specs" / "generated.adv"))


# --- regressions: bugs these properties found, now fixed (minimal reproducers) ---------------------


@pytest.mark.parametrize("text", ["evaluate { (x) (a + b) * c }\n", "evaluate { (a + x) (-b)^2 }\n"])
def test_evaluate_entries_are_names_or_calls_so_formatting_cannot_merge_them(text):
    # an evaluate block lists attacks: a bare expression there is a syntax error, not an attack
    with pytest.raises(SpecError):
        parse_text(text)
    fine = "evaluate { natural pgd(steps = 20) cw }\n"
    assert parse_text(format_text(fine)) == parse_text(fine)


@pytest.mark.parametrize("sep", ["\f", "\x1c", "\x85", "\u2028"], ids=["ff", "fs", "nel", "ls"])
def test_formatting_keeps_a_comment_containing_a_line_separator_character(sep):
    text = f"# keep{sep}all of this\nobjective x {{\n}}\n"
    assert "all of this" in format_text(text)


def test_formatting_a_string_with_a_form_feed_invents_no_comment():
    text = 'objective x {\n    model   "a\f# b"\n}\n'
    assert parse_text(text).comments == ()


def test_a_name_that_starts_with_where_is_a_name():
    text = "objective a {\n    form    minmax\n    wherever 1\n}\n"
    keys = [c.key.name for c in parse_text(text).items[0].clauses]
    assert keys == ["form", "wherever"]
