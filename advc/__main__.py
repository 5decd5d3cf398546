"""``python -m advc``: the same command as ``advc``, with the same import path.

``python -m`` puts the working folder first on ``sys.path``; ``advc`` (the installed script) does
not. Left there, a file next to the user's spec -- ``torch.py``, or the module a spec names as
its model -- would be imported from wherever the command runs, ahead of the real packages, and
the working folder would decide what code runs. So the entry goes, unless the user named that
folder in ``PYTHONPATH`` themselves (Python folds the two entries into one).
"""

import os
import sys


def drop_working_folder(path: list[str], cwd: str, pythonpath: str | None) -> None:
    """Remove the working folder ``python -m`` put at ``path[0]``, unless ``pythonpath`` names it."""
    if not path or path[0] not in ("", cwd):
        return
    named = {os.path.abspath(os.path.join(cwd, p or os.curdir)) for p in (pythonpath or "").split(os.pathsep)}
    if pythonpath and os.path.abspath(cwd) in named:
        return
    del path[0]


if not sys.flags.safe_path:  # (python -P already leaves it out)
    drop_working_folder(sys.path, os.getcwd(), os.environ.get("PYTHONPATH"))

from advc.cli import main  # noqa: E402 - after the import path is fixed

main()
