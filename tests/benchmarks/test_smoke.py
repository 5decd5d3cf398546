"""Benchmarks are not tests, but they must not rot: each runs once at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"
BENCHMARKS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p != GPU_CHECK)  # gpu_check: below


#: the suite's parts that are scripts of their own (attack_floor.py, published_style.py) have their
#: own smoke run here; the suite's smoke runs the rest
EXTRA = {"suite": ["--only", "early_stop,scaling,memory"]}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_runs_at_smoke_size(script):
    done = subprocess.run([sys.executable, str(script), "--smoke", *EXTRA.get(script.stem, [])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "|" in done.stdout  # it printed its table


def test_gpu_check_smoke_runs_every_part_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "|" in done.stdout
    figures = json.loads(out.read_text())
    for config in ["fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"]:
        assert figures["epoch"][config]["s_per_step"] > 0, figures["epoch"][config]
    assert [m["model"] for m in figures["ratio"]["models"]] == ["preact_resnet18(width=4)", "SmallCNN"]
    assert all(m["published_over_advc"] > 0 for m in figures["ratio"]["models"])
    assert len(figures["cli"]["seconds_per_epoch"]) == 2
    per_step = figures["count"]["per_step"]
    assert set(per_step) == {"preact_resnet18 advc", "preact_resnet18 published", "SmallCNN advc",
                             "SmallCNN published"}
    if not torch.cuda.is_available():
        assert figures["epoch"]["fp32"]["peak_allocated_gib"] == "skipped: no CUDA"
        assert "skipped: no CUDA" in done.stdout


def _counter():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    return gpu_check


def test_cost_counter_charges_syncs_and_launches_as_a_gpu_would():
    gpu_check = _counter()
    x = torch.rand(8, 3)
    with gpu_check.GpuCostCounter() as c:
        host = torch.zeros(8)  # no device=: lives on the host, launches nothing
        host[0] += 1
        moved = host.to(x.device)  # blocking host-to-device copy
        s = x.sum(1) + moved
        assert isinstance(bool(s.max() > 0), bool)  # .item()-like: a device-to-host sync
        s[s > 0]  # boolean mask: output shape depends on the data
        s.tolist()
        torch.tensor(3.0, device=x.device)  # Python data copied to the device
    assert dict(c.syncs) == {"H2D blocking copy": 2, "item/bool/int/float of a device tensor": 1,
                             "boolean-mask indexing: index": 1, "D2H copy": 1}
    assert dict(c.launches) == {"sum": 1, "add": 1, "max": 1, "gt": 2, "index": 1}
    assert c.total_launches == 6 and c.host_ops > 0 and not c.mixed


def test_published_gairat_step_syncs_once_per_sample_and_step_while_advc_never_reads_values():
    gpu_check = _counter()
    K, batch = 2, 4
    steps = gpu_check.gairat_steps("preact_resnet18", 2, K, torch.device("cpu"), foreach=True)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    published = gpu_check.count_step(steps["published"], x, y)
    advc = gpu_check.count_step(steps["advc"], x, y)
    assert published.syncs["item/bool/int/float of a device tensor"] == K * batch
    assert published.syncs["H2D blocking copy"] == 2  # the numpy start noise and kappa
    assert not any(kind.startswith(("item/bool", "data-dependent", "boolean-mask")) for kind in advc.syncs)
    assert published.flops > advc.flops  # parameter gradients during the attack
