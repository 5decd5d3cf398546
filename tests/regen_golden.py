"""Regenerate the golden generated modules: python tests/regen_golden.py (from the repo root).

Each spec in specs/ compiles to tests/golden/<name>.py, and each spec of the research corpus
(tests/compiler/corpus_research/*.adv) to tests/compiler/corpus_research/golden/<name>.py;
tests/compiler/test_codegen.py and tests/compiler/test_corpus_research.py compare them byte for
byte, so every change to generated code shows up in review. ``--only specs`` or ``--only
research`` regenerates one set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESEARCH = Path("tests/compiler/corpus_research")
# the research specs extend packaged ones (trades, mart): found through specs/, so the origin
# comments in the goldens name specs/trades.adv wherever advc is installed
RESEARCH_SPEC_PATH = ["specs"]


def research_specs() -> list[Path]:
    """The research corpus specs, repo-relative."""
    return sorted(RESEARCH.glob("*.adv"))


def main(argv=None) -> int:
    from advc.api import compile_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("specs", "research"), help="regenerate one set of golden files")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # SPEC_FILE in the header is repo-relative
    jobs = []
    if args.only in (None, "specs"):
        jobs += [(spec, Path("tests/golden"), None) for spec in sorted(Path("specs").glob("*.adv"))]
    if args.only in (None, "research"):
        jobs += [(spec, RESEARCH / "golden", RESEARCH_SPEC_PATH) for spec in research_specs()]
    for spec, folder, spec_path in jobs:
        _, source = compile_spec(spec, spec_path=spec_path)
        out = folder / f"{spec.stem}.py"
        out.write_text(source, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
