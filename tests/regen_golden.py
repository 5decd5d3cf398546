"""Regenerate the golden generated modules: python tests/regen_golden.py (from the repo root).

Each spec in specs/ compiles to tests/golden/<name>.py; tests/compiler/test_codegen.py
compares them byte for byte, so every change to generated code shows up in review.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from advc.api import compile_spec

    os.chdir(ROOT)  # SPEC_FILE in the header is repo-relative
    for spec in sorted(Path("specs").glob("*.adv")):
        _, source = compile_spec(spec)
        out = Path("tests/golden") / f"{spec.stem}.py"
        out.write_text(source, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
