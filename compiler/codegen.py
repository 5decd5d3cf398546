"""Stage 4: lowered program -> the text of one Python module, through jinja2 templates.

Templates (``compiler/templates/*.py.j2``) only lay text out; every value they print was
produced by ``lower`` from checked data. The result is deterministic: the same spec and
overrides give byte-identical text. The module imports only what it calls; with
``standalone=True`` those imports from advc are replaced by the runtime's own source
(``compiler/inline.py``), so the file runs where advc is not installed.
"""

from __future__ import annotations

import functools
import re

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from advc import __version__

from . import ir
from .identity import training_id
from .lower import TEMPLATES, Emitted, Lowered, comment, literal, lower, safe
from .safety import validate

# the attack's settings as the templates name them when they follow the epoch
_LOCAL = {"eps": "eps", "steps": "K", "step_size": "step_size", "noise": "noise", "tau": "tau", "rho": "rho",
          "lambda": "lam"}  # fmt: skip
# which function reads which setting (for hoisting `name = name_at(epoch)` to its top)
_READS = {"attack": ("eps", "steps", "step_size", "noise", "tau", "rho"), "weights": ("steps", "lambda")}
_CONST_DOC = {
    "attack.steps": "K: the most PGD steps a sample takes", "attack.noise": "FAT's omega: std of Gaussian noise per step",
    "attack.init_scale": "std of the normal start", "attack.confidence": "CW margin confidence",
    "form.tau": "extra steps a sample may take once the stop rule fires", "form.rho": "margin the wrong class must win by",
    "weight.lambda": "GAIRAT's lambda", "train.epochs": "epochs, counted from 0",
}  # fmt: skip


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
    env.filters["safe"] = safe
    return env


def _tidy(text: str) -> str:
    """Blank lines as ruff/black lay them out; drop `import math` when nothing uses it."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    out: list[str] = []
    for line in lines:
        top_level_def = line.startswith(("def ", "class ", "@", "# --- ", "if __name__"))
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
    return _prune_imports(text)


_FROM = re.compile(r"^from (advc[\w.]*) import (\([^)]*\)|[^\n]*)\n", re.M)


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's isort order within an import: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def _prune_imports(text: str) -> str:
    """Import from advc only the names the module uses, one sorted line (or block) per module,
    in the third-party block (for a run folder, advc is an installed package)."""
    imports = sorted((m.group(1), [n.strip() for n in m.group(2).strip("()").replace("\n", " ").split(",")
                                   if n.strip()]) for m in _FROM.finditer(text))
    body = _FROM.sub("", text)
    kept = []
    for module, names in imports:
        used = sorted({n for n in names if re.search(rf"\b{n}\b", body)}, key=_isort_key)
        if not used:
            continue
        line = f"from {module} import {', '.join(used)}"
        kept.append(line if len(line) <= 100 else f"from {module} import (\n" + "".join(f"    {n},\n" for n in used) + ")")
    first = _FROM.search(text)
    if first is None:
        return text
    start = first.start()
    block = "\n".join(kept) + "\n" if kept else ""
    rest = _FROM.sub("", text[start:])
    return text[:start] + block + rest


def _settings_of(low: Lowered):
    def settings_of(section: str) -> list[str]:
        lines = []
        for key, em in low.emitted.items():
            if key.split(".")[0] != section or not em.constant:
                continue
            doc = _CONST_DOC.get(key)
            lines.append(f"{em.const_name} = {em.const_literal()}" + (f"  # {doc}" if doc else ""))
        return lines

    return settings_of


def _locals(low: Lowered) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``v``: what the templates write for each setting; ``hoist``: lines atop each function."""
    v, hoist = {}, {"attack": [], "weights": [], "loss": []}
    by_name: dict[str, Emitted] = {em.setting.name: em for em in low.emitted.values()}
    for name, em in by_name.items():
        v[name] = em.call() if em.constant else _LOCAL.get(name, em.call())
    for function, names in _READS.items():
        for name in names:
            em = by_name.get(name)
            if em is not None and not em.constant and name in _LOCAL:
                hoist[function].append(f"{_LOCAL[name]} = {em.call()}")
    p = low.program
    if p.weight.lam is not None and "weight.lambda" in low.emitted:
        v["lam"] = v["lambda"]
    eps = low.emitted["threat.eps"]
    v["eps_final"] = eps.call() if eps.constant else eps.call("epochs - 1")  # evaluation: the final radius
    if p.train is not None:
        v["lr_epoch"] = low.emitted[p.train.lr.key].call()
    return v, hoist


def generate(program: ir.Program, *, standalone: bool = False, filename: str = "objective.py") -> str:
    """The generated module for a checked program (``standalone``: with the runtime inlined)."""
    low = lower(program, __version__, standalone)
    v, hoist = _locals(low)
    steps = program.attack.steps
    max_kappa = "STEPS" if steps.const is not None else str(int(steps.hi))
    w = program.weight
    normalise_doc = {"mean": ", normalised to mean 1 over the batch", "sum": ", normalised to sum 1 over the batch",
                     "none": ", not normalised"}[w.normalise]
    nan_hint = "lower the learning rate or check the data"
    if w.kind != "none":
        nan_hint = f"lower the learning rate, check the data, or check the weight {safe(w.text)} (all zero?)"
    text = _env().get_template("module.py.j2").render(
        program=program,
        low=low,
        version=__version__,
        standalone=standalone,
        filename=filename,
        v=v,
        hoisted=lambda function: hoist.get(function, []),
        settings_of=_settings_of(low),
        functions=[em for em in low.emitted.values() if not em.constant],
        has_noise=program.attack.noise.const != 0,
        stop_doc=safe(program.form.stop_text) if program.form.stop is not None else "misclassified by the margin rho",
        normalise_doc=normalise_doc,
        weight_where=f"{w.origin.file}:{w.origin.line}" if w.origin else "weight",
        training_id=training_id(program) if program.train is not None else "",
        nan_hint=nan_hint,
        max_kappa=max_kappa,
        evaluate_text=low.evaluate_text,
        overrides=[(safe(k), safe(v)) for k, v in program.overrides],
    )
    text = _tidy(text)
    validate(text)  # the allow-list gate: a generator bug can never emit anything else
    if standalone:  # the allow-listed imports from advc, replaced by advc's own source
        from .inline import inline_runtime

        text = inline_runtime(text)
    return text
