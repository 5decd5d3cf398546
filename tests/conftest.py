"""Test-wide settings. The README's test command runs the suite on two pytest-xdist workers
(``-n 2`` in pyproject's addopts, one test file per worker at a time so a file's module-scoped
training runs happen once); each worker, and every process it starts, gets its share of the cores
instead of each assuming all of them (set before torch is imported, which reads it once)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
