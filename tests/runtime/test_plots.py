"""`advc plot`: the papers' figures across run folders, legends naming experiments by what differs.

The runs are written by hand (run.json, kept evaluations through ``results.write_evaluation``,
metrics.jsonl): two objectives x two ε x two seeds, with numbers the tests recompute.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from advc.compiler.identity import digest
from advc.errors import AdvcError
from advc.runtime.plots import FIGURES, plot_runs
from advc.runtime.results import write_evaluation

ROOT = Path(__file__).resolve().parents[2]
EPS = (0.031, 0.0627)
OBJECTIVES = ("fat", "trades")


def accuracies(objective: str, eps: float, seed: int) -> tuple[float, float]:
    """Natural and PGD-20 accuracy of one synthetic run."""
    return 90.0 - 100 * eps - 2 * seed - (4 if objective == "trades" else 0), 40.0 + 100 * eps + 3 * seed


def curve(objective: str, eps: float, seed: int, epoch: int) -> dict:
    return {"epoch": epoch, "loss": 2.0 - 0.1 * epoch + 0.01 * seed, "val_pgd20": 30.0 + 5 * epoch + seed + 10 * eps,
            "bps_per_sample": 10.0 - epoch + (1 if objective == "trades" else 0), "val_natural": 80.0}


def write_run(root: Path, objective: str, eps: float, seed: int, *, epochs: int = 3, metrics: bool = True) -> Path:
    experiment = {"objective": objective, "threat.norm": "linf", "threat.eps": eps, "train.epochs": epochs,
                  "evaluate": "Natural PGD-20", "eval.n": 100, "eval.eps": eps}
    run = root / f"{objective}-eps{eps}-seed{seed}"
    run.mkdir(parents=True)
    record = {"format": "advc-run", "version": 1, "spec": objective, "seed": seed, "experiment_id": digest(experiment)[:16],
              "experiment": experiment, "advc_version": "0.1.0"}
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    nat, pgd = accuracies(objective, eps, seed)
    for checkpoint in ("best", "last"):
        write_evaluation(run, checkpoint=checkpoint, weights_sha256="0" * 64, epoch=epochs - 1,
                         attacks="natural pgd(steps = 20)", n=100, eps=eps, norm="linf",
                         results={"Natural": nat, "PGD-20": pgd}, by="advc run")
    if metrics:
        lines = [json.dumps(curve(objective, eps, seed, e)) for e in range(epochs)]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plots") / "sweep"
    for objective in OBJECTIVES:
        for eps in EPS:
            for seed in (0, 1):
                write_run(root, objective, eps, seed)
    return root


@pytest.fixture(scope="module")
def figures(sweep):
    """The figures of the sweep, drawn once for the tests that read them."""
    return plot_runs([sweep], sweep.parent / "figures")


def flat(points) -> list[float]:
    return [x for point in points for x in point]


def svg_texts(path: Path) -> list[str]:
    return [el.text for el in ET.parse(path).iter("{http://www.w3.org/2000/svg}text") if el.text]


EXPERIMENTS = ["fat (eps=0.031)", "fat (eps=0.0627)", "trades (eps=0.031)", "trades (eps=0.0627)"]


def test_each_figure_is_written_as_png_and_svg(figures, sweep):
    out = sweep.parent / "figures"
    assert list(figures) == list(FIGURES)
    for name, figure in figures.items():
        assert figure.files == [out / f"{name}.png", out / f"{name}.svg"]
        assert figure.files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ET.parse(figure.files[1]).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{ext}" for name in FIGURES for ext in ("png", "svg"))  # no temporary files left


def test_every_experiment_is_in_the_legends_named_by_its_differences_never_its_folder(figures, sweep):
    # accuracy vs ε: ε is the x axis, so the lines differ in the objective alone
    assert figures["accuracy_vs_eps"].legend == ["fat", "trades"]
    assert sorted(figures["natural_vs_robust"].legend) == EXPERIMENTS
    assert sorted(figures["training_curves"].legend) == EXPERIMENTS
    folders = [p.name for p in sweep.iterdir()]
    for figure in figures.values():
        texts = svg_texts(figure.files[1])
        assert all(label in texts for label in figure.legend)
        assert not any(folder in t for t in texts for folder in folders)


def test_accuracy_vs_eps_draws_the_mean_and_std_over_seeds_per_column(figures):
    data = figures["accuracy_vs_eps"].data
    assert list(data) == ["Natural", "PGD-20"]
    for column, i in (("Natural", 0), ("PGD-20", 1)):
        for objective in OBJECTIVES:
            expected = []
            for eps in EPS:
                values = [accuracies(objective, eps, s)[i] for s in (0, 1)]
                expected.append((eps, statistics.mean(values), statistics.stdev(values)))
            assert flat(data[column][objective]) == pytest.approx(flat(expected))


def test_natural_vs_robust_is_one_point_per_experiment_with_error_bars(figures):
    data = figures["natural_vs_robust"].data["Natural vs PGD-20"]
    nat = [accuracies("trades", 0.0627, s)[0] for s in (0, 1)]
    pgd = [accuracies("trades", 0.0627, s)[1] for s in (0, 1)]
    assert flat(data["trades (eps=0.0627)"]) == pytest.approx(
        [statistics.mean(nat), statistics.stdev(nat), statistics.mean(pgd), statistics.stdev(pgd)])


def test_training_curves_average_the_seeds_of_each_experiment_per_epoch(figures):
    data = figures["training_curves"].data
    assert list(data) == ["val_pgd20", "loss", "bps_per_sample"]
    values = [[curve("fat", 0.031, s, e)["val_pgd20"] for s in (0, 1)] for e in range(3)]
    assert flat(data["val_pgd20"]["fat (eps=0.031)"]) == pytest.approx(
        flat((e + 1, statistics.mean(v), statistics.stdev(v)) for e, v in enumerate(values)))


def test_a_figure_without_data_is_skipped_with_its_reason(tmp_path):
    write_run(tmp_path / "runs", "fat", 0.031, 0, metrics=False)
    write_run(tmp_path / "runs", "fat", 0.031, 1, metrics=False)
    figures = plot_runs([tmp_path / "runs"], tmp_path / "figures")
    assert figures["accuracy_vs_eps"].lines() == ["skipped accuracy_vs_eps: the runs have fewer than two values of "
                                                  "threat.eps"]
    assert figures["training_curves"].lines() == ["skipped training_curves: no run has metrics.jsonl"]
    assert figures["natural_vs_robust"].lines() == [f"wrote {tmp_path / 'figures' / 'natural_vs_robust.png'}",
                                                    f"wrote {tmp_path / 'figures' / 'natural_vs_robust.svg'}"]
    assert figures["natural_vs_robust"].legend == ["fat"]


def refused(*args, **kwargs) -> str:
    with pytest.raises(AdvcError) as info:
        plot_runs(*args, **kwargs)
    return info.value.render()


def test_bad_input_is_one_line(sweep, tmp_path):
    afile = tmp_path / "figures.png"
    afile.write_text("x")
    assert refused([sweep], afile) == f"error: --out names a file ({afile}) -- hint: name a folder for the figures"
    assert refused([sweep], tmp_path / "f", checkpoint="both") == (
        "error: unknown checkpoint 'both' (--checkpoint) -- hint: best or last")
    assert refused([sweep], tmp_path / "f", attacks="natural pgd(steps = 7)") == (
        f"error: no run has a kept evaluation with these attacks ({sweep}) -- hint: evaluate first: "
        "advc eval RUN --attacks 'natural pgd(steps = 7)'")
    assert refused([tmp_path / "nope"], tmp_path / "f") == (
        f"error: no such run folder ({tmp_path / 'nope'}) -- hint: name a folder written by advc run, or a folder "
        "holding such folders")


def test_nothing_to_plot_is_one_line(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    experiment = {"objective": "fat", "threat.eps": 0.031}
    (run / "run.json").write_text(json.dumps({"format": "advc-run", "seed": 0, "experiment_id": "a" * 16,
                                              "experiment": experiment, "advc_version": "0.1.0"}))
    assert refused([run], tmp_path / "f") == (
        "error: nothing to plot: accuracy_vs_eps: no run has a kept evaluation of its best checkpoint; "
        "natural_vs_robust: no kept evaluation of the best checkpoint has Natural; training_curves: no run has "
        f"metrics.jsonl ({run}) -- hint: train with advc run (it evaluates and logs metrics)")


def test_the_command_line_prints_the_files_written(sweep, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "advc", "plot", str(sweep), "--out", str(tmp_path / "figs")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"wrote {tmp_path / 'figs' / name}.{ext}" for name in FIGURES
                                        for ext in ("png", "svg")]


def test_a_setting_that_follows_eps_stays_on_its_line_and_one_that_does_not_splits_it(tmp_path):
    """step_size = eps / 4 resolves to one number per ε: still one line per objective. Two step
    sizes at the same ε are two experiments: two lines."""
    def with_step(run: Path, step: float) -> None:
        record = json.loads((run / "run.json").read_text())
        record["experiment"]["attack.step_size"] = step
        record["experiment_id"] = digest(record["experiment"])[:16]
        (run / "run.json").write_text(json.dumps(record), encoding="utf-8")

    follows = tmp_path / "follows"
    for eps in EPS:
        for seed in (0, 1):
            with_step(write_run(follows, "madry", eps, seed), eps / 4)
    figure = plot_runs([follows], tmp_path / "f1")["accuracy_vs_eps"]
    assert figure.legend == ["madry"]
    assert figure.notes == ["within each line, attack.step_size follows ε"]
    assert [x for x, _, _ in figure.data["Natural"]["madry"]] == list(EPS)

    split = tmp_path / "split"
    for eps in EPS:
        for seed, step in ((0, 0.01), (1, 0.02)):
            with_step(write_run(split, "madry", eps, seed), step)
    figure = plot_runs([split], tmp_path / "f2")["accuracy_vs_eps"]
    assert sorted(figure.legend) == ["madry (step_size=0.01)", "madry (step_size=0.02)"]
    assert figure.notes == []
