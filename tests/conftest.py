"""Test-wide settings. The README's test command runs the suite on two pytest-xdist workers
(``-n 2 --dist loadgroup`` in pyproject's addopts): tests are handed out one at a time, except
that the tests of a file with a module-scoped fixture (training runs it shares) stay on one
worker, so those runs happen once. Each worker, and every process it starts, gets its share of
the cores instead of each assuming all of them (set before torch is imported, which reads it
once)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


def pytest_collection_modifyitems(config, items):
    """Keep the tests of a file that shares a module-scoped fixture on one xdist worker."""
    import pytest

    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d and d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
