"""Long-running fuzzer of advc's front end (a script, not a pytest module).

    python tests/fuzz/fuzz_frontend.py --cases 10000 [--seed 0] [--json report.json]

Each case takes one of the real specs in ``specs/`` and mutates it -- token deletions,
duplications, swaps and replacements, random bytes, huge numbers, deep nesting, very long
identifiers, non-UTF-8 encodings, truncation, empty and whitespace-only files, or wholly
random bytes -- then feeds it through the front end as ``advc check`` does: ``decode`` (the
bytes of a file), ``parse_text``, ``check_text`` (named as if it sat in ``specs/`` so that
``extends madry`` resolves), and, for a spec that checks, ``codegen.generate`` (which runs the
allow-list walker of ``compiler/safety.py``; the fuzzer also runs it again itself).

Counted: cases; *tracebacks* -- any exception other than ``SpecError`` (the only error a user
may see); *unsafe modules* -- ``UnsafeModule`` from the allow-list walker; *bad locations* --
a diagnostic pointing outside the file it names; *hangs* -- a case over ``--case-timeout``
seconds; and the slowest case. Then a set of ~1 MB specs must be checked or rejected within
``--big-limit`` seconds each. Exit status 0 only when every count of a failure is 0.

``tests/fuzz/test_fuzz_smoke.py`` runs a few hundred cases of this in the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from advc.compiler.check import check_text
from advc.compiler.codegen import generate
from advc.compiler.diagnostics import SpecError
from advc.compiler.parse import decode, parse_text
from advc.compiler.safety import UnsafeModule, validate

ROOT = Path(__file__).resolve().parents[2]
SPECS_DIR = ROOT / "specs"

TOKEN = re.compile(rb"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][+-]?\d+)?|#[^\n]*|.", re.DOTALL)
NUMBER = re.compile(rb"^\d")
NAME = re.compile(rb"^[A-Za-z_]")
VOCABULARY = [
    b"objective", b"extends", b"train", b"evaluate", b"where", b"{", b"}", b"(", b")", b",", b"=",
    b":", b"-", b"+", b"*", b"/", b"^", b"#", b'"', b"\n", b"pgd", b"kappa", b"weight", b"piecewise",
    b"cosine", b"linear", b"0", b"1.5", b"-1", b"1e9", b"inf", b"nan", b"\x00", b"\xef\xbb\xbf",
    "é".encode(), b"\r", b"\t", b"adv", b"nat", b"loss", b"ce(adv)", b"linear(0: 1)", b"__import__",
    b"{{ x }}", b"{% if %}", b"'", b'"""', b"\\", b"__class__", b"os.system", b"model", b"data",
    b"epochs", b"batch", b"seed", b"optim", b"lambda", b"tau", b"rho", b"eps", b"steps",
]  # fmt: skip
HUGE = [
    b"9" * 400, b"1e999", b"1e-999", b"1" + b"0" * 5000, b"0." + b"0" * 3000 + b"1", b"18446744073709551617",
    b"2^1024", b"10^10^10", b"1e308 * 10", b"-1e309", b"0x10", b"1_000", b"00000000000008",
]  # fmt: skip
# injection attempts: names and strings a hostile spec could smuggle into generated code
HOSTILE = [
    b"__import__", b"__class__", b"__builtins__", b"eval", b"exec", b"os", b"sys", b"open",
    b"compile", b"globals", b"getattr", b"_private", b"torch", b"math", b"losses", b"TRAIN",
    b'"x\\"); import os; os.system(\\"id\\"); (\\""', b'"\\n__import__(\\"os\\")\\n"',
    b'"{{ cycler.__init__.__globals__.os }}"', b'"{% for x in () %}{% endfor %}"',
    b'"{0.__class__}"', b'"%(x)s %s"', b'"\'\'\'"', b'"\\\\"', b"'single'", b'"\\x00"',
    b'"\\u2028"', b'"${x}"', b"{{ 7*7 }}", b"{% raw %}", b"#}", b"x.__class__", b"a.b", b"f(x)(y)",
]  # fmt: skip
STRATEGIES = [
    "delete", "duplicate", "swap", "replace", "insert", "char", "bytes", "huge", "nest",
    "long_name", "encoding", "truncate", "empty", "random", "mixed", "hostile",
]  # fmt: skip


@dataclass
class Stats:
    cases: int = 0
    parsed: int = 0
    checked: int = 0
    generated: int = 0
    spec_errors: int = 0
    tracebacks: int = 0
    unsafe_modules: int = 0
    bad_locations: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    slowest_case: str = ""
    seconds: float = 0.0
    by_strategy: Counter = field(default_factory=Counter)
    generated_by_strategy: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)  # (kind, strategy, spec, detail, input repr)
    big: list = field(default_factory=list)  # (name, bytes, seconds, outcome)

    @property
    def failed(self) -> int:
        big_slow = sum(1 for b in self.big if b["outcome"] in {"slow", "traceback"})
        return self.tracebacks + self.unsafe_modules + self.bad_locations + self.hangs + big_slow

    def as_dict(self) -> dict:
        return {
            "cases": self.cases,
            "parsed": self.parsed,
            "checked": self.checked,
            "generated": self.generated,
            "spec_errors": self.spec_errors,
            "tracebacks": self.tracebacks,
            "unsafe_modules": self.unsafe_modules,
            "bad_locations": self.bad_locations,
            "hangs": self.hangs,
            "slowest_s": round(self.slowest_s, 4),
            "slowest_case": self.slowest_case,
            "seconds": round(self.seconds, 2),
            "by_strategy": dict(sorted(self.by_strategy.items())),
            "generated_by_strategy": dict(sorted(self.generated_by_strategy.items())),
            "failures": self.failures[:20],
            "big": self.big,
        }


# --------------------------------------------------------------------------------------------
# mutations (all on bytes: a spec is a file)


def _mutate(rng: random.Random, source: bytes, strategy: str) -> bytes:
    tokens = TOKEN.findall(source)
    if strategy == "empty":
        return rng.choice(
            [b"", b" ", b"\n" * 50, b"# only a comment\n", b"\xef\xbb\xbf", b"\t\r\n"]
        )
    if strategy == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    if strategy == "truncate":
        return source[: rng.randrange(len(source) + 1)]
    if strategy == "encoding":
        text = source.decode("utf-8", errors="replace")
        choice = rng.choice(["utf-16", "utf-32", "latin-1-bytes", "ff", "surrogate", "overlong"])
        if choice in {"utf-16", "utf-32"}:
            return text.encode(choice)
        if choice == "latin-1-bytes":
            i = rng.randrange(len(source) + 1)
            return source[:i] + "é ü ß".encode("latin-1") + source[i:]
        i = rng.randrange(len(source) + 1)
        junk = {"ff": b"\xff\xfe", "surrogate": b"\xed\xa0\x80", "overlong": b"\xc0\xaf"}[choice]
        return source[:i] + junk + source[i:]
    if strategy == "mixed":
        out = source
        for _ in range(rng.randint(2, 5)):
            out = _mutate(rng, out, rng.choice(STRATEGIES[:11]))
        return out
    if not tokens:
        return source
    i = rng.randrange(len(tokens))
    if strategy == "delete":
        del tokens[i : i + rng.randint(1, 4)]
    elif strategy == "duplicate":
        tokens[i:i] = tokens[i : i + rng.randint(1, 6)] * rng.randint(1, 3)
    elif strategy == "swap":
        j = rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
    elif strategy == "replace":
        tokens[i] = rng.choice(VOCABULARY)
    elif strategy == "insert":
        tokens.insert(i, rng.choice(VOCABULARY))
    elif strategy == "char":
        tok = tokens[i]
        k = rng.randrange(len(tok) + 1)
        tokens[i] = (
            tok[:k] + chr(rng.randrange(0x20, 0x3000)).encode("utf-8", "replace") + tok[k + 1 :]
        )
    elif strategy == "bytes":
        tokens.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
    elif strategy == "huge":
        numbers = [k for k, t in enumerate(tokens) if NUMBER.match(t)] or [i]
        tokens[rng.choice(numbers)] = rng.choice(HUGE)
    elif strategy == "nest":
        numbers = [k for k, t in enumerate(tokens) if NUMBER.match(t)] or [i]
        k = rng.choice(numbers)
        depth = rng.choice([10, 50, 63, 64, 65, 100, 500, 5000])
        kind = rng.choice(["parens", "neg", "call", "sum", "pow"])
        t = tokens[k]
        if kind == "parens":
            tokens[k] = b"(" * depth + t + b")" * depth
        elif kind == "neg":
            tokens[k] = b"-" * depth + t
        elif kind == "call":
            tokens[k] = b"linear(0: " * depth + t + b")" * depth
        elif kind == "sum":
            tokens[k] = b" + ".join([t] * depth)
        else:
            tokens[k] = b"^".join([t] * min(depth, 200))
    elif strategy == "hostile":
        targets = [k for k, t in enumerate(tokens) if NAME.match(t)] or [i]
        for k in rng.sample(targets, min(len(targets), rng.randint(1, 3))):
            payload = rng.choice(HOSTILE)
            if k and tokens[k - 1] == b'"':  # the name is a string's content: stay inside it
                payload = payload.strip(b'"')
            tokens[k] = payload
    elif strategy == "long_name":
        names = [k for k, t in enumerate(tokens) if NAME.match(t)] or [i]
        tokens[rng.choice(names)] = b"x" * rng.choice([256, 4096, 65536, 300_000])
    return b"".join(tokens)


# --------------------------------------------------------------------------------------------
# one case


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def _check_locations(err: SpecError, text: str | None, file: str) -> str | None:
    """A description of the first diagnostic that points outside its file, or None."""
    for diag in err.diagnostics:
        span = diag.span
        if span is None:
            continue
        source = err.sources.texts.get(span.file, text if span.file == file else None)
        if source is None:
            if Path(span.file).is_file():  # a parent spec on disk (extends)
                continue
            return f"diagnostic names {span.file}, whose text was not kept"
        lines = source.split("\n")
        if not 1 <= span.line <= len(lines):
            return f"line {span.line} outside 1..{len(lines)}"
        if not 1 <= span.col <= len(lines[span.line - 1]) + 1:
            return f"column {span.col} outside line {span.line}"
    err.render()  # rendering must not fail either
    return None


def run_case(data: bytes, file: str, stats: Stats, strategy: str, timeout: float) -> None:
    stats.cases += 1
    stats.by_strategy[strategy] += 1
    text = None
    use_alarm = timeout > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    t0 = time.perf_counter()
    stage = "decode"
    try:
        text = decode(data, file)
        stage = "parse"
        parse_text(text, file)
        stats.parsed += 1
        stage = "check"
        program = check_text(text, file)
        stats.checked += 1
        stage = "generate"
        source = generate(program)
        validate(source)
        stats.generated += 1
        stats.generated_by_strategy[strategy] += 1
    except SpecError as err:
        stats.spec_errors += 1
        bad = _check_locations(err, text, file)
        if bad:
            stats.bad_locations += 1
            stats.failures.append(
                ["bad location", strategy, file, f"{stage}: {bad}", repr(data[:300])]
            )
    except UnsafeModule as exc:
        stats.unsafe_modules += 1
        stats.failures.append(["unsafe module", strategy, file, str(exc), repr(data[:300])])
    except _Timeout:
        stats.hangs += 1
        stats.failures.append(["hang", strategy, file, f"{stage} > {timeout}s", repr(data[:300])])
    except Exception:
        stats.tracebacks += 1
        stats.failures.append(
            [
                "traceback",
                strategy,
                file,
                f"{stage}: {traceback.format_exc(limit=-3)}",
                repr(data[:300]),
            ]
        )
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    if elapsed > stats.slowest_s:
        stats.slowest_s = elapsed
        stats.slowest_case = f"{strategy} on {Path(file).name} ({len(data)} bytes, {stage})"


def _real_specs() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SPECS_DIR.glob("*.adv"))}


def fuzz(cases: int, seed: int = 0, case_timeout: float = 10.0, progress: bool = False) -> Stats:
    rng = random.Random(seed)
    specs = _real_specs()
    names = sorted(specs)
    stats = Stats()
    t0 = time.perf_counter()
    for n in range(cases):
        name = rng.choice(names)
        strategy = rng.choice(STRATEGIES)
        data = _mutate(rng, specs[name], strategy)
        # named as if it sat in specs/ (``extends madry`` resolves), under another stem so
        # that it never resolves to itself through the real file
        run_case(data, str(SPECS_DIR / f"fuzz_{name}"), stats, strategy, case_timeout)
        if progress and (n + 1) % 1000 == 0:
            print(f"  {n + 1} cases, {stats.tracebacks} tracebacks, {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
    stats.seconds = time.perf_counter() - t0
    return stats


# --------------------------------------------------------------------------------------------
# ~1 MB specs


def big_specs(size: int = 1 << 20) -> dict[str, bytes]:
    base = (SPECS_DIR / "gair_fat.adv").read_bytes()
    quick = (SPECS_DIR / "quickstart.adv").read_bytes()
    line = b"# " + b"padding " * 12 + b"\n"
    return {
        "valid spec + 1 MB of comments": quick + line * (size // len(line)),
        "1 MB flat sum": quick.replace(b"eps = 0.1", b"eps = " + b"0.1 + " * (size // 6) + b"0", 1),
        "1 MB identifier": quick.replace(b"small_cnn", b"m" * size, 1),
        "1 MB of nested parentheses": b"objective x { threat linf(eps = "
        + b"(" * (size // 2)
        + b"1"
        + b")" * (size // 2)
        + b") }",
        "1 MB of random bytes": random.Random(1).randbytes(size),
        "1 MB of objectives": base * (size // len(base)),
        "1 MB number": quick.replace(b"eps = 0.1", b"eps = " + b"9" * size, 1),
        "1 MB string": quick.replace(b"digits", b'"' + b"s" * size + b'"', 1),
    }


def check_big(stats: Stats, limit: float) -> None:
    for name, data in big_specs().items():
        t0 = time.perf_counter()
        outcome = "checked"
        try:
            program = check_text(decode(data, "big.adv"), str(SPECS_DIR / "big.adv"))
            generate(program)
        except SpecError:
            outcome = "rejected"
        except Exception:
            outcome = "traceback"
            stats.failures.append(["traceback", "big", name, traceback.format_exc(limit=-3), ""])
        seconds = time.perf_counter() - t0
        if outcome != "traceback" and seconds > limit:
            outcome = "slow"
        stats.big.append(
            {"name": name, "bytes": len(data), "seconds": round(seconds, 3), "outcome": outcome}
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--case-timeout", type=float, default=10.0, help="seconds before a case is a hang"
    )
    parser.add_argument(
        "--big-limit", type=float, default=10.0, help="seconds allowed for a 1 MB spec"
    )
    parser.add_argument("--no-big", action="store_true", help="skip the 1 MB specs")
    parser.add_argument("--json", type=Path, help="write the counts here")
    args = parser.parse_args(argv)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    stats = fuzz(args.cases, args.seed, args.case_timeout, progress=True)
    if not args.no_big:
        check_big(stats, args.big_limit)
    report = stats.as_dict()
    print(f"cases {stats.cases}  (parsed {stats.parsed}, checked {stats.checked}, "
          f"generated {stats.generated}, SpecError {stats.spec_errors})")  # fmt: skip
    print(f"tracebacks {stats.tracebacks}  unsafe modules {stats.unsafe_modules}  "
          f"bad locations {stats.bad_locations}  hangs {stats.hangs}")  # fmt: skip
    print(f"slowest case {stats.slowest_s * 1000:.1f} ms: {stats.slowest_case}")
    print(f"total {stats.seconds:.1f}s (seed {args.seed})")
    hostile = stats.by_strategy["hostile"]
    print(f"hostile cases {hostile}: rejected {hostile - stats.generated_by_strategy['hostile']}, "
          f"generated allow-listed code {stats.generated_by_strategy['hostile']}")  # fmt: skip
    for big in stats.big:
        print(
            f"  {big['name']:<32} {big['bytes']:>8} bytes  {big['seconds']:7.3f}s  {big['outcome']}"
        )
    for failure in stats.failures[:10]:
        print("FAILURE:", *failure, sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if stats.failed else 0


if __name__ == "__main__":
    sys.exit(main())
