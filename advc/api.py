"""``advc.load``: compile a spec and import the generated module in memory.

The returned ``CompiledObjective`` exposes the stable interface of DESIGN §5 --
``attack``, ``weights``, ``loss``, ``train_step``, ``source`` -- plus the checked
``program`` and the imported ``module`` for the runner.
"""

from __future__ import annotations

import linecache
import sys
import types
from pathlib import Path

from advc.compiler.check import check_file
from advc.compiler.codegen import generate
from advc.compiler.ir import Program


def import_generated(source: str, filename: str, name: str) -> types.ModuleType:
    """Import generated module text under ``name``; tracebacks and inspect show ``filename``."""
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), module.__dict__)  # text advc generated and validated
    return module


class CompiledObjective:
    def __init__(self, program: Program, source: str):
        self.program = program
        self.source = source
        filename = f"<advc {program.name} {program.spec_hash[:12]}>"
        module = import_generated(source, filename, f"advc_compiled_{program.name}_{program.spec_hash[:12]}")
        self.module = module
        self.attack = module.attack
        self.weights = module.weights
        self.loss = module.loss
        self.train_step = module.train_step
        self.AttackResult = module.AttackResult

    @property
    def name(self) -> str:
        return self.program.name

    def __repr__(self) -> str:
        return f"<CompiledObjective {self.program.name} from {self.program.file}>"


def compile_spec(path: str | Path, overrides=None, *, standalone: bool = False, filename: str = "objective.py",
                 spec_path: list[str] | None = None) -> tuple[Program, str]:
    """Check a spec (with overrides) and return the program and its generated module text."""
    program = check_file(path, overrides, spec_path=spec_path)
    return program, generate(program, standalone=standalone, filename=filename)


def load(path: str | Path, overrides=None) -> CompiledObjective:
    """Compile ``path`` (applying ``overrides``, a dict or ``["key=value"]``) and import it."""
    program, source = compile_spec(path, overrides)
    return CompiledObjective(program, source)
