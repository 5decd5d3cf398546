"""Stage 4: lowered program -> the text of one Python module, through jinja2 templates.

Templates (``compiler/templates/*.py.j2``) only lay text out; every value they print was
produced by ``lower`` from checked data. The result is deterministic: the same spec and
overrides give byte-identical text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from advc import __version__

from . import ir
from .lower import comment, literal, lower
from .safety import validate

TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def _env() -> SandboxedEnvironment:
    # sandboxed: templates can only lay out the values they are given, never reach past them
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["py"] = literal
    env.filters["origin"] = comment
    return env


def _tidy(text: str) -> str:
    """Blank lines as ruff/black lay them out; drop `import math` when nothing uses it."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    out: list[str] = []
    for line in lines:
        top_level_def = line.startswith(("def ", "class ", "@", "# --- "))
        if top_level_def and not (out and out[-1].startswith("@")):
            # the block starts at the comments right above it
            head = len(out)
            while head and out[head - 1].startswith("# ") and not out[head - 1].startswith("# --- "):
                head -= 1
            block = out[head:]
            del out[head:]
            while out and out[-1] == "":
                out.pop()
            if out:
                out += ["", ""]
            out += block
        elif line == "" and len(out) > 1 and out[-1] == "" and out[-2] == "":
            continue
        out.append(line)
    text = "\n".join(out) + "\n"
    if "math." not in text.replace("import math\n", ""):
        text = text.replace("import math\n", "")
    return _prune_attack_imports(text)


def _prune_attack_imports(text: str) -> str:
    """Import from the attack core only the functions this module calls."""
    head = "from advc.runtime.attacks import "
    start = text.index(head)
    end = text.index("\n", start)
    body = text[:start] + text[end:]
    names = [n.strip() for n in text[start + len(head) : end].split(",")]
    used = [n for n in names if re.search(rf"\b{n}\(", body)]
    return text[:start] + head + ", ".join(used) + text[end:]


def generate(program: ir.Program) -> str:
    """The generated module for a checked program."""
    low = lower(program, __version__)
    ref = {s.name: s.ref() for s in low.schedules}
    overrides = [(_safe(k), _safe(v)) for k, v in program.overrides]
    text = _env().get_template("module.py.j2").render(
        program=program,
        version=__version__,
        schedules=low.schedules,
        ref=ref,
        has_noise=not (isinstance(program.attack.noise, ir.Const) and program.attack.noise.value == 0),
        needs=sorted(program.weight.needs),
        train_literal=low.train_literal,
        evaluate_literal=low.evaluate_literal,
        weight_code=low.weight_code,
        weight_bindings=low.weight_bindings,
        loss_code=low.loss_code,
        loss_bindings=low.loss_bindings,
        uses_adv=low.uses_adv,
        uses_nat=low.uses_nat,
        uses_weight=low.uses_weight,
        overrides=overrides,
    )
    text = _tidy(text)
    validate(text)  # the allow-list gate: a generator bug can never emit anything else
    return text


def _safe(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in " ".join(str(text).split()))
