"""The research corpus (issue #14): the objectives a researcher tried, one spec each.

All eleven compile: their generated modules are golden files compared byte for byte, each
trains a step on digits-shaped data at its first and last epoch, and what a spec says is checked
against the formula of the paper's official code that its header comment names. Free AT's
replayed minibatches (form free) and AWP's weight perturbation (the perturb clause) were the
two constructs the language lacked when the corpus was written; they train through `advc run`
(tests/runtime/test_zoo.py), the train step below covers the rest.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advc.api import CompiledObjective, compile_spec
from advc.compiler.fmt import format_text
from advc.compiler.program import value_at
from advc.runtime.models import small_cnn

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path("tests/compiler/corpus_research")
GOLDEN = CORPUS / "golden"
SPEC_PATH = ["specs"]  # as tests/regen_golden.py compiles them: parents as specs/trades.adv
ALL = sorted((ROOT / CORPUS).glob("*.adv"))
#: the generated train_step is one PGD attack then one update; Free AT replays each minibatch and
#: AWP perturbs the weights in the generated training loop, which `advc run` drives
LOOP_ONLY = ("awp", "free_at")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def load(stem: str) -> CompiledObjective:
    program, source = compile_spec(CORPUS / f"{stem}.adv", spec_path=SPEC_PATH)
    return CompiledObjective(program, source)


def test_the_corpus_holds_eleven_objectives():
    assert [p.stem for p in ALL] == ["awp", "curriculum", "dynamic_at", "eps_warmup", "free_at", "l2_minmin",
                                     "mail", "mart_digits", "rho_minmin", "trades_digits", "trades_es_kappa"]


@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.stem)
def test_each_spec_opens_with_a_comment_naming_its_paper_and_is_formatted(spec):
    text = spec.read_text(encoding="utf-8")
    header = "".join(line[2:] + " " for line in text.splitlines() if line.startswith("# ")
                     and text.index(line) < text.index("objective "))
    assert re.search(r"\([^()]*(et al\.|Zhang|Wang)[^()]*(19|20)\d\d", header), f"{spec.name}: no paper named"
    assert format_text(text) == text, f"{spec.name} is not in advc fmt's form"


@pytest.mark.parametrize("spec", ALL, ids=lambda p: p.stem)
def test_generated_module_matches_golden_file(spec):
    _, source = compile_spec(CORPUS / spec.name, spec_path=SPEC_PATH)
    golden = ROOT / GOLDEN / f"{spec.stem}.py"
    assert golden.exists(), "missing golden file: run python tests/regen_golden.py"
    assert source == golden.read_text(encoding="utf-8"), (
        f"generated code for {spec.name} changed: review, then python tests/regen_golden.py --only research"
    )


def test_every_compiling_spec_has_a_golden_file_and_no_stale_ones():
    assert {p.stem for p in (ROOT / GOLDEN).glob("*.py")} == {p.stem for p in ALL}


@pytest.mark.parametrize("spec", [p for p in ALL if p.stem not in LOOP_ONLY], ids=lambda p: p.stem)
def test_each_objective_trains_a_step_at_its_first_and_last_epoch(spec):
    torch.manual_seed(0)
    prog = load(spec.stem)
    program = prog.program
    model = small_cnn(in_channels=1, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for epoch in (0, program.train.epochs - 1):
        result, value = prog.train_step(model, optimizer, x, y, epoch)
        assert math.isfinite(float(value))
        eps, K = value_at(program, "threat.eps", epoch), value_at(program, "attack.steps", epoch)
        delta = (result.x_adv - x).flatten(1)
        size = delta.abs().amax(1) if program.threat.norm == "linf" else delta.norm(dim=1)
        assert (size <= eps * (1 + 1e-6)).all()
        assert ((result.steps >= 0) & (result.steps <= K)).all() and ((result.kappa >= 0) & (result.kappa <= K)).all()


def test_advc_check_passes_all_and_finds_the_packaged_parents():
    script = Path(sys.executable).with_name("advc")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "advc"]
    done = subprocess.run([*cmd, "check", *[str(CORPUS / p.name) for p in ALL]], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    ok = [line.split(": ok")[0] for line in done.stdout.splitlines()]
    assert ok == [str(CORPUS / p.name) for p in ALL]
    assert "extends trades: " in done.stdout and "(advc's packaged specs)" in done.stdout


# --- each spec says what its paper's code does ----------------------------------------------------


def _adversarial(stem: str, epoch: int, seed: int = 0):
    torch.manual_seed(seed)
    prog = load(stem)
    model = small_cnn(in_channels=1, num_classes=10).double().eval()
    x, y = torch.rand(24, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (24,))
    result = prog.attack(model, x, y, epoch)
    with torch.no_grad():
        logits = model(result.x_adv)  # eval mode, as the attack's last point
    return prog, result, logits, y


def mail_weight_assign(logit, target, bias, slope):
    """QizhouWang/MAIL mail_loss.py, PM and weight_assign, with eye(10) on the CPU."""
    eye = torch.eye(10, dtype=logit.dtype)
    probs_gt = (logit.softmax(1) * eye[target]).sum(1)
    top2 = logit.softmax(1).topk(2, largest=True)
    gt_in_top2 = (top2[1] == target.view(-1, 1)).float().sum(1) == 1
    probs_2nd = torch.where(gt_in_top2, top2[0].sum(1) - probs_gt, top2[0][:, 0])
    return ((probs_2nd - probs_gt + bias) * slope).sigmoid() * 3


@pytest.mark.parametrize("epoch", [0, 5, 6, 9])
def test_mail_weights_are_the_official_weight_assign_from_epoch_6(epoch):
    prog, result, logits, y = _adversarial("mail", epoch)
    expected = mail_weight_assign(logits, y, -1.5, 1.0) if epoch >= 6 else torch.ones(len(y), dtype=torch.float64)
    assert torch.allclose(prog.weights(result, epoch), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("epoch", [0, 1, 9])
def test_dynamic_at_weighs_each_sample_by_its_adversarial_ce_from_the_second_epoch(epoch):
    prog, result, logits, y = _adversarial("dynamic_at", epoch)
    expected = F.cross_entropy(logits, y, reduction="none") if epoch >= 1 else torch.ones(len(y), dtype=torch.float64)
    assert torch.allclose(prog.weights(result, epoch), expected, rtol=1e-12, atol=1e-15)


def test_dynamic_at_threshold_falls_linearly_to_zero_as_the_code_computes_it():
    module = load("dynamic_at").module
    for epoch in range(10):  # train_models.py: max(fosc_max - fosc_max * ep / dynamic_epoch, 0)
        assert module.c_at(epoch) == pytest.approx(max(0.5 - 0.5 * epoch / 8, 0.0), abs=1e-15)


def test_eps_warmup_ramps_as_bag_of_tricks_then_holds():
    module = load("eps_warmup").module
    for epoch in range(10):  # train_cifar.py: (t + 1) / warmup_eps_epoch * epsilon while t < W
        expected = (epoch + 1) / 5 * 0.1 if epoch < 5 else 0.1
        assert module.eps_at(epoch) == pytest.approx(expected, rel=1e-15)


def test_curriculum_strengthens_the_attack_with_the_epoch_and_scales_its_step():
    module = load("curriculum").module
    ks = [module.steps_at(epoch) for epoch in range(10)]
    assert ks == [1, 1, 2, 2, 4, 4, 7, 7, 10, 10]
    assert all(module.step_size_at(e) == pytest.approx(2.5 * 0.1 / k) for e, k in enumerate(ks))


@pytest.mark.parametrize("epoch", [0, 4, 9])
def test_trades_es_kappa_weights_are_gairs_tanh_with_a_falling_lambda(epoch):
    prog, result, _, _ = _adversarial("trades_es_kappa", epoch)
    K, half = 10, 10 // 2
    lam = 2 + (-1 - 2) * epoch / 10
    kappa = result.kappa.double()
    raw = (1 + torch.tanh(lam + 5 * (half - kappa) / half)) / 2  # GAIR.py's tanh
    assert torch.allclose(prog.weights(result, epoch), raw * len(raw) / raw.sum(), rtol=1e-12)
    assert value_at(prog.program, "attack.steps", epoch) == K
