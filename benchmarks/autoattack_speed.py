"""advc's standard AutoAttack against torchattacks' on the quickstart's best checkpoint (issue #11).

    python benchmarks/autoattack_speed.py [--run DIR] [--repeats 3] [--components] [--smoke]

Without ``--run`` it first trains the quickstart once (``advc run specs/quickstart.adv
--no-eval``, into a temporary folder). It loads ``DIR/checkpoints/best.safetensors`` into
``small_cnn`` and attacks the 360 test digits at eps = 0.1 (L-inf) with both implementations,
one thread, interleaved repeats (advc, torchattacks, advc, ...), and prints robust accuracy,
the median wall and CPU seconds of each and their ratios (on a shared machine the CPU
seconds leave out the time spent waiting for a core).

Like with like, as tests/runtime/test_autoattack.py::test_cross_check_against_torchattacks sets
it: torchattacks' AutoAttack wrapper leaves its components at their class defaults (10
iterations, Square with a rescaled schedule), so its APGD, APGD-T and FAB get the standard
version's 100 iterations and Square its 5000 queries with the published, un-rescaled schedule.
Both sides: APGD-CE (1 restart), APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries).

``--components`` adds a table of each component alone (CPU seconds, one run each, on the
samples the previous components left robust): where the time goes.

``--smoke``: an untrained model (its own predictions as labels), a few samples, a few
iterations and queries, one repeat; it checks that the benchmark still runs
(tests/benchmarks/test_smoke.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EPS = 0.1


def train_quickstart(out: Path) -> None:
    """The quickstart as a user runs it, without the evaluation table (not needed here)."""
    args = [sys.executable, "-m", "advc", "run", str(ROOT / "specs" / "quickstart.adv"),
            "--no-eval", "--quiet", "--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"advc run failed:\n{done.stdout}\n{done.stderr}")


def load_model(run: Path | None):
    from advc.runtime.checkpoint import load_checkpoint
    from advc.runtime.models import build_model

    model = build_model("small_cnn", in_channels=1, num_classes=10)
    if run is not None:
        state, _, _ = load_checkpoint(run / "checkpoints" / "best.safetensors")
        model.load_state_dict(state)
    return model.eval()


def torchattacks_autoattack(torchattacks, model, steps: int, queries: int):
    """torchattacks' standard AutoAttack with the standard version's iteration counts."""
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard",
                                     n_classes=10, seed=0)
    for component in attack._autoattack.attacks:
        if hasattr(component, "steps"):
            component.steps = steps
        if hasattr(component, "n_queries"):
            component.n_queries = queries
            component.rescale_schedule = False
    return attack


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).sum().item() / len(y)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a quickstart run folder (default: train one)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (interleaved)")
    parser.add_argument("--components", action="store_true",
                        help="also time each component alone (CPU seconds, one run each)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark still runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from advc.runtime.autoattack import run_autoattack
    from advc.runtime.data import load_dataset

    if args.smoke:
        torch.manual_seed(0)  # the untrained model's weights
        model, n, steps, queries, repeats = load_model(None), 6, 3, 20, 1
    else:
        steps, queries, repeats = 100, 5000, args.repeats
        if args.run is None:
            with tempfile.TemporaryDirectory() as tmp:
                train_quickstart(Path(tmp) / "quickstart")
                model = load_model(Path(tmp) / "quickstart")
        else:
            model = load_model(args.run)
    test = load_dataset("digits")
    x, y = test.x_test, test.y_test
    if args.smoke:  # the untrained model's own predictions as labels: every attack has work
        x = x[:n]
        y = model(x).argmax(1).detach()
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed: pip install --no-deps torchattacks")
        return 0 if args.smoke else 1

    def ours():
        gen = torch.Generator().manual_seed(0)
        return run_autoattack(model, x, y, eps=EPS, steps=steps, square_queries=queries,
                              generator=gen)

    def theirs():
        return torchattacks_autoattack(torchattacks, model, steps, queries)(x, y)

    times: dict[str, list[float]] = {"advc": [], "torchattacks": []}
    cpu: dict[str, list[float]] = {"advc": [], "torchattacks": []}
    acc: dict[str, float] = {}
    load_before = os.getloadavg()
    for _ in range(repeats):
        for name, attack in (("advc", ours), ("torchattacks", theirs)):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = attack()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            if name == "advc":
                acc[name] = out.accuracy
                assert (out.x_adv - x).abs().max().item() <= EPS + 1e-6
            else:
                acc[name] = accuracy(model, out, y)
                assert (out - x).abs().max().item() <= EPS + 1e-6
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread; load average (1/5/15 min) before "
          f"{'/'.join(f'{v:.2f}' for v in load_before)}, after "
          f"{'/'.join(f'{v:.2f}' for v in load_after)}")
    print(f"{len(y)} test digits, eps {EPS} (L-inf); APGD/FAB {steps} iterations, "
          f"Square {queries} queries; {repeats} interleaved repeats, median\n")
    print("| implementation | robust accuracy (%) | median seconds | all runs (s) | median CPU seconds |")
    print("|---|---|---|---|---|")
    for name in times:
        runs = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {name} | {acc[name]:.2f} | {med[name]:.2f} | {runs} | {med_cpu[name]:.2f} |")
    print(f"\ntorchattacks / advc: {med['torchattacks'] / med['advc']:.2f}x wall time, "
          f"{med_cpu['torchattacks'] / med_cpu['advc']:.2f}x CPU time; "
          f"accuracy difference {acc['advc'] - acc['torchattacks']:+.2f} points")
    if args.components or args.smoke:
        components(model, x, y, steps, queries, torchattacks)
    return 0


def components(model, x, y, steps: int, queries: int, torchattacks) -> None:
    """Each component alone, in the ensemble's order, on the samples the previous ones left
    robust (each implementation its own), CPU seconds: where the time goes."""
    from advc.runtime.autoattack import STANDARD_ATTACKS, predict_labels, run_autoattack

    gen = torch.Generator().manual_seed(0)
    ours = [lambda xs, ys, name=name: run_autoattack(
        model, xs, ys, eps=EPS, steps=steps, square_queries=queries, attacks=(name,),
        generator=gen).x_adv for name in STANDARD_ATTACKS]
    theirs = torchattacks_autoattack(torchattacks, model, steps, queries)._autoattack.attacks
    rows = {}
    for impl, attacks in (("advc", ours), ("torchattacks", theirs)):
        robust = predict_labels(model, x) == y
        for name, attack in zip(STANDARD_ATTACKS, attacks, strict=True):
            idx = robust.nonzero().squeeze(1)
            start = time.process_time()
            adv = attack(x[idx], y[idx]) if idx.numel() else x[idx]
            seconds = time.process_time() - start
            robust[idx[predict_labels(model, adv) != y[idx]]] = False
            rows.setdefault(name, {})[impl] = (idx.numel(), int(robust.sum()), seconds)
    print("\n| component | advc: samples in -> robust | advc CPU s | torchattacks: samples in -> "
          "robust | torchattacks CPU s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        (a_in, a_out, a_s), (t_in, t_out, t_s) = r["advc"], r["torchattacks"]
        print(f"| {name} | {a_in} -> {a_out} | {a_s:.1f} | {t_in} -> {t_out} | {t_s:.1f} | "
              f"{t_s / a_s if a_s else float('nan'):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
