"""`advc table`: rows are experiments (run.json), never spec names; numbers are kept evaluations.

Most tests build run folders by hand -- a run.json and evaluations written through
``results.write_evaluation`` -- so every case is exact; the slow ones at the end train real
1-epoch quickstart runs through the command line (the issue's Done-when).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from advc.compiler.identity import digest
from advc.errors import AdvcError, UserError
from advc.runtime.results import (
    RESULTS_FILE,
    load_evaluations,
    merge_runs,
    short_names,
    value_formatter,
    write_evaluation,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "specs" / "quickstart.adv"
PGD = "natural pgd(steps = 20)"

#: an experiment as run.json records it (a few settings stand for the ~40 a real one has)
BASE = {"objective": "fat", "threat.norm": "linf", "threat.eps": 0.031, "form.tau": 3, "train.epochs": 10,
        "train.lr": 0.1, "evaluate": "Natural PGD-20", "eval.n": 100, "eval.eps": 0.031}


def advc(*args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "advc", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def make_run(root: Path, name: str, settings: dict | None = None, *, seed: int = 0,
             version: str = "0.1.0") -> Path:
    """A run folder's run.json (the experiment id is a digest of its settings, as advc run's is)."""
    experiment = {**BASE, **(settings or {})}
    if "threat.eps" in (settings or {}) and "eval.eps" not in settings:
        experiment["eval.eps"] = experiment["threat.eps"]
    run = root / name
    run.mkdir(parents=True)
    record = {"format": "advc-run", "version": 1, "spec": experiment["objective"], "seed": seed,
              "experiment_id": digest(experiment)[:16], "experiment": experiment, "advc_version": version}
    (run / "run.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return run


def keep(run: Path, checkpoint: str, results: dict, *, attacks: str = PGD, n: int = 100, eps: float = 0.031,
         by: str = "advc run", created: str | None = None, sanity: list | None = None) -> Path:
    """One kept evaluation; ``created`` dates it (evaluations written in one second would tie)."""
    path = write_evaluation(run, checkpoint=checkpoint, weights_sha256="0" * 64, epoch=9, attacks=attacks, n=n,
                            eps=eps, norm="linf", results=results, sanity=sanity, by=by)
    if created is not None:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["created"] = created
        path.write_text(json.dumps(data), encoding="utf-8")
    return path


def trained(root: Path, name: str, settings: dict | None = None, *, seed: int = 0, best: dict, last: dict | None = None,
            version: str = "0.1.0", **kept) -> Path:
    """A run as advc run leaves it: run.json and its own evaluation of best and last."""
    run = make_run(root, name, settings, seed=seed, version=version)
    eps = {**BASE, **(settings or {})}["threat.eps"]
    keep(run, "best", best, eps=kept.pop("eps", eps), **kept)
    keep(run, "last", last or best, eps=eps, **kept)
    return run


def rows_of(markdown: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]


def by_row(markdown: str, width: int) -> dict[tuple[str, ...], list[str]]:
    """Body rows keyed by their first ``width`` cells."""
    return {tuple(r[:width]): r[width:] for r in rows_of(markdown)[2:]}


def ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def refused(**kwargs) -> str:
    paths = kwargs.pop("paths")
    with pytest.raises(AdvcError) as info:
        merge_runs(paths, **kwargs)
    return info.value.render()


# --------------------------------------------------------------------------------------
# grouping: experiments, seeds, what differs
# --------------------------------------------------------------------------------------


def test_seeds_of_one_experiment_are_one_row_per_checkpoint_with_mean_and_sample_std(tmp_path):
    nat, pgd = [84.1, 85.0, 84.6], [50.2, 49.1, 50.9]
    runs = [trained(tmp_path, f"fat-{s}", seed=s, best={"Natural": nat[s], "PGD-20": pgd[s]},
                    last={"Natural": nat[s] - 1, "PGD-20": pgd[s] - 2}) for s in range(3)]
    md = merge_runs(runs)
    assert rows_of(md)[0] == ["Objective", "Checkpoint", "Seeds", "Natural", "PGD-20"]
    assert by_row(md, 3) == {
        ("fat", "best", "3 seeds"): [ms(nat), ms(pgd)],
        ("fat", "last", "3 seeds"): [ms([v - 1 for v in nat]), ms([v - 2 for v in pgd])],
    }
    assert "Test accuracy (%), mean ± sample std over seeds; n=100, eval eps=0.031, attacks=natural pgd(steps = 20)." in md


def test_one_name_is_not_one_experiment_runs_that_differ_are_rows_with_the_differences_as_columns(tmp_path):
    runs = [
        trained(tmp_path, "a", seed=0, best={"Natural": 80.0, "PGD-20": 50.0}),
        trained(tmp_path, "b", {"threat.eps": 0.0627, "train.epochs": 20}, seed=0, best={"Natural": 70.0, "PGD-20": 40.0}),
        trained(tmp_path, "c", {"form.tau": "piecewise(0: 0, 40: 3)"}, seed=1, best={"Natural": 82.0, "PGD-20": 48.0}),
    ]
    md = merge_runs(runs, checkpoint="best")
    assert rows_of(md)[0] == ["Objective", "eps", "tau", "epochs", "Checkpoint", "Seeds", "Natural", "PGD-20"]
    assert rows_of(md)[2:] == [  # sorted by the differing settings
        ["fat", "0.031", "3", "10", "best", "1 seed", "80.00", "50.00"],
        ["fat", "0.031", "piecewise(0: 0, 40: 3)", "10", "best", "1 seed", "82.00", "48.00"],
        ["fat", "0.0627", "3", "20", "best", "1 seed", "70.00", "40.00"],
    ]
    assert "eval eps = eps" in md  # the evaluated ε repeats the training ε: said once, not a column


def test_a_sweep_folder_stands_for_the_run_folders_one_level_down(tmp_path):
    sweep = tmp_path / "sweep"
    for s in range(2):
        trained(sweep, f"fat-seed{s}", seed=s, best={"Natural": 80.0 + s, "PGD-20": 50.0})
    (sweep / "notes").mkdir()  # a folder that is no run (no checkpoints, results or metrics) is passed over
    assert by_row(merge_runs([sweep], checkpoint="best"), 3) == {
        ("fat", "best", "2 seeds"): [ms([80.0, 81.0]), "50.00 ± 0.00"]}


def test_short_column_names_stay_unambiguous():
    assert short_names(["threat.eps", "form.tau", "train.epochs", "n", "eval eps"]) == {
        "threat.eps": "eps", "form.tau": "tau", "train.epochs": "epochs", "n": "n", "eval eps": "eval eps"}
    assert short_names(["threat.eps", "eval.eps", "train.data.n", "n"]) == {
        "threat.eps": "threat.eps", "eval.eps": "eval.eps", "train.data.n": "data.n", "n": "n"}


def test_setting_values_print_short_unless_two_would_look_alike():
    assert value_formatter([8 / 255, 16 / 255])(8 / 255) == "0.03137"
    alike = value_formatter([0.031372, 0.031374])
    assert alike(0.031372) == "0.031372" and alike(0.031374) == "0.031374"
    assert value_formatter([True, None])(True) == "true" and value_formatter([True, None])(None) == "-"


def test_runs_measured_on_different_n_or_eps_are_not_averaged(tmp_path):
    a = trained(tmp_path, "a", seed=0, best={"Natural": 80.0})
    b = trained(tmp_path, "b", seed=1, best={"Natural": 90.0}, n=50)  # (the evaluate labels differ: no own list)
    c = trained(tmp_path, "c", seed=2, best={"Natural": 70.0}, eps=0.05)
    md = merge_runs([a, b, c], checkpoint="best")
    assert rows_of(md)[0] == ["Objective", "n", "eval eps", "Checkpoint", "Seeds", "Natural"]
    assert rows_of(md)[2:] == [["fat", "50", "0.031", "best", "1 seed", "90.00"],
                               ["fat", "100", "0.031", "best", "1 seed", "80.00"],
                               ["fat", "100", "0.05", "best", "1 seed", "70.00"]]


def test_experiments_that_differ_only_in_what_advc_run_evaluates_still_get_their_own_rows(tmp_path):
    # the eval.n setting makes them two experiments; measured alike (n=40 both), the table shows why
    a = make_run(tmp_path, "a", {"eval.n": 100})
    b = make_run(tmp_path, "b", {"eval.n": "all"})
    for run, acc in ((a, 60.0), (b, 70.0)):
        keep(run, "best", {"Natural": acc, "PGD-5": acc / 2}, attacks="natural pgd(steps = 5)", n=40, by="advc eval")
    md = merge_runs([a, b], checkpoint="best", attacks="natural pgd(steps = 5)")
    assert rows_of(md)[0] == ["Objective", "eval.n", "Checkpoint", "Seeds", "Natural", "PGD-5"]
    assert rows_of(md)[2:] == [["fat", "100", "best", "1 seed", "60.00", "30.00"],
                               ["fat", "all", "best", "1 seed", "70.00", "35.00"]]


def test_the_same_experiment_and_seed_twice_is_refused_naming_both_folders(tmp_path):
    a = trained(tmp_path, "a", seed=3, best={"Natural": 80.0})
    b = trained(tmp_path, "b", seed=3, best={"Natural": 81.0})
    experiment = json.loads((a / "run.json").read_text())["experiment_id"]
    assert refused(paths=[a, b]) == (
        f"error: two runs of experiment {experiment} with seed 3 ({a} and {b}) -- hint: pass each run once; "
        "runs of one experiment differ only in train.seed")


def test_runs_of_different_advc_versions_are_averaged_with_a_note(tmp_path):
    a = trained(tmp_path, "a", seed=0, best={"Natural": 80.0}, version="0.1.0")
    b = trained(tmp_path, "b", seed=1, best={"Natural": 82.0}, version="0.2.0")
    other = trained(tmp_path, "c", {"threat.eps": 0.05}, seed=0, best={"Natural": 75.0}, version="0.2.0")
    md = merge_runs([a, b, other], checkpoint="best")
    assert by_row(md, 4)[("fat", "0.031", "best", "2 seeds")] == [ms([80.0, 82.0])]
    assert f"- fat (eps=0.031) averages runs of different advc versions: 0.1.0 ({a}); 0.2.0 ({b})\n" in md
    assert md.count("different advc versions") == 1


def test_sanity_warnings_of_the_shown_evaluations_are_listed_under_the_table(tmp_path):
    warn = [{"name": "black-box-not-stronger", "status": "warn", "detail": "Square 3.00 above PGD-20"},
            {"name": "monotone-in-eps", "status": "pass", "detail": "ok"}]
    a = trained(tmp_path, "a", seed=0, best={"Natural": 80.0}, sanity=warn)
    md = merge_runs([a], checkpoint="best")
    assert md.endswith(f"\nSanity warnings:\n\n- ⚠️ {a} (fat seed 0, best) `black-box-not-stronger`: "
                       "Square 3.00 above PGD-20\n")
    assert "monotone-in-eps" not in md


# --------------------------------------------------------------------------------------
# which evaluation: the run's own list, the newest; --attacks; --checkpoint
# --------------------------------------------------------------------------------------


def test_by_default_the_newest_evaluation_of_the_runs_own_list_is_shown(tmp_path):
    run = make_run(tmp_path, "a")
    keep(run, "best", {"Natural": 80.0, "PGD-20": 50.0}, created="2026-01-01T10:00:00+0000")
    keep(run, "best", {"Natural": 81.0, "PGD-20": 51.0}, by="advc eval", created="2026-01-02T10:00:00+0000")
    keep(run, "best", {"Natural": 99.0, "PGD-5": 90.0}, attacks="natural pgd(steps = 5)", by="advc eval",
         created="2026-01-03T10:00:00+0000")
    # same labels, other attack parameters: not the list advc run evaluated
    keep(run, "best", {"Natural": 1.0, "PGD-20": 1.0}, attacks="natural pgd(steps = 20, step_size = 0.001)",
         by="advc eval", created="2026-01-04T10:00:00+0000")
    md = merge_runs([run], checkpoint="best")
    assert by_row(md, 3) == {("fat", "best", "1 seed"): ["81.00", "51.00"]}
    assert "Notes" not in md


def test_attacks_pick_the_newest_evaluation_of_that_list_whatever_its_spelling(tmp_path):
    run = make_run(tmp_path, "a")
    keep(run, "best", {"Natural": 80.0, "PGD-20": 50.0})
    keep(run, "best", {"Natural": 79.0, "PGD-5": 60.0}, attacks="natural pgd(steps = 5)", created="2026-01-01T00:00:00+0000")
    keep(run, "best", {"Natural": 78.0, "PGD-5": 61.0}, attacks="natural pgd(steps = 5)", created="2026-01-02T00:00:00+0000")
    md = merge_runs([run], checkpoint="best", attacks="natural   pgd(steps=5)")
    assert by_row(md, 3) == {("fat", "best", "1 seed"): ["78.00", "61.00"]}
    # defaults spelt out or left out are the same list: pgd's steps default to 20
    assert by_row(merge_runs([run], checkpoint="best", attacks="natural pgd"), 3) == {
        ("fat", "best", "1 seed"): ["80.00", "50.00"]}


def test_without_its_own_list_the_newest_evaluation_is_shown_with_a_note(tmp_path):
    run = make_run(tmp_path, "a")  # trained with --no-eval, evaluated later with other attacks
    keep(run, "best", {"Natural": 77.0, "PGD-3": 66.0}, attacks="natural pgd(steps = 3)", by="advc eval")
    md = merge_runs([run], checkpoint="best")
    assert by_row(md, 3) == {("fat", "best", "1 seed"): ["77.00", "66.00"]}
    assert (f"- {run} (best): no kept evaluation of its own evaluate list (Natural PGD-20); shown: its newest, "
            "natural pgd(steps = 3)\n") in md


def test_runs_without_what_is_asked_are_left_out_with_a_note(tmp_path):
    a = trained(tmp_path, "a", seed=0, best={"Natural": 80.0, "PGD-20": 50.0})
    b = trained(tmp_path, "b", seed=1, best={"Natural": 82.0, "PGD-20": 52.0})
    keep(a, "best", {"Natural": 79.0, "PGD-5": 60.0}, attacks="natural pgd(steps = 5)")
    md = merge_runs([a, b], checkpoint="best", attacks="natural pgd(steps = 5)")
    assert by_row(md, 3) == {("fat", "best", "1 seed"): ["79.00", "60.00"]}
    assert f"- left out of best (no kept evaluation with the attacks 'natural pgd(steps = 5)'): {b}\n" in md


def test_checkpoint_best_or_last_alone(tmp_path):
    run = trained(tmp_path, "a", best={"Natural": 80.0}, last={"Natural": 70.0})
    assert by_row(merge_runs([run], checkpoint="last"), 3) == {("fat", "last", "1 seed"): ["70.00"]}
    assert [r[1] for r in rows_of(merge_runs([run]))[2:]] == ["best", "last"]


def test_no_run_with_what_is_asked_is_one_line(tmp_path):
    run = trained(tmp_path, "a", best={"Natural": 80.0})
    assert refused(paths=[run], attacks="natural pgd(steps = 5)") == (
        f"error: no run has a kept evaluation with these attacks ({run}) -- hint: evaluate first: "
        "advc eval RUN --attacks 'natural pgd(steps = 5)'")
    bare = make_run(tmp_path, "bare")
    assert refused(paths=[bare], checkpoint="last") == (
        f"error: no run has a kept evaluation of the last checkpoint ({bare}) -- hint: evaluate first: advc eval RUN")


# --------------------------------------------------------------------------------------
# --by: one column group per value of a setting (FAT's ε-sweep table)
# --------------------------------------------------------------------------------------


def _sweep(root: Path) -> dict:
    """fat and trades, each at ε 0.031 and 0.0627, two seeds: accuracies by (objective, eps, seed)."""
    numbers = {}
    for objective in ("fat", "trades"):
        for eps in (0.031, 0.0627):
            for seed in (0, 1):
                nat = 90.0 - 100 * eps - seed - (3 if objective == "trades" else 0)
                pgd = 40.0 + 100 * eps + seed
                numbers[objective, eps, seed] = (nat, pgd)
                trained(root, f"{objective}-{eps}-{seed}", {"objective": objective, "threat.eps": eps}, seed=seed,
                        best={"Natural": nat, "PGD-20": pgd})
    return numbers


def test_by_pivots_one_column_group_per_value(tmp_path):
    numbers = _sweep(tmp_path / "sweep")
    md = merge_runs([tmp_path / "sweep"], checkpoint="best", by="threat.eps")
    assert rows_of(md)[0] == ["Objective", "Checkpoint", "Seeds", "Natural @ eps=0.031", "PGD-20 @ eps=0.031",
                              "Natural @ eps=0.0627", "PGD-20 @ eps=0.0627"]

    def cells(objective):
        return [ms([numbers[objective, eps, s][i] for s in (0, 1)]) for eps in (0.031, 0.0627) for i in (0, 1)]

    assert rows_of(md)[2:] == [["fat", "best", "2 seeds", *cells("fat")], ["trades", "best", "2 seeds", *cells("trades")]]
    assert "eval eps = eps" in md


def test_by_keeps_rows_apart_that_differ_in_anything_else(tmp_path):
    trained(tmp_path, "a", {"threat.eps": 0.031}, best={"Natural": 80.0})
    trained(tmp_path, "b", {"threat.eps": 0.0627}, best={"Natural": 70.0})
    trained(tmp_path, "c", {"threat.eps": 0.0627, "train.epochs": 20}, best={"Natural": 72.0})
    md = merge_runs([tmp_path], checkpoint="best", by="threat.eps")
    assert rows_of(md)[0] == ["Objective", "epochs", "Checkpoint", "Seeds", "Natural @ eps=0.031", "Natural @ eps=0.0627"]
    assert rows_of(md)[2:] == [["fat", "10", "best", "1 seed", "80.00", "70.00"],
                               ["fat", "20", "best", "1 seed", "-", "72.00"]]


def test_by_one_value_folds_only_the_evaluated_eps_not_a_setting_that_happens_to_equal_it(tmp_path):
    for objective, val in (("fat", 0.1), ("trades", 0.2)):  # fat's train.val equals its eps by chance
        trained(tmp_path, objective, {"objective": objective, "threat.eps": 0.1, "train.val": val},
                best={"Natural": 80.0})
    md = merge_runs([tmp_path], checkpoint="best", by="threat.eps")
    assert rows_of(md)[0] == ["Objective", "val", "Checkpoint", "Seeds", "Natural @ eps=0.1"]
    assert rows_of(md)[2:] == [["fat", "0.1", "best", "1 seed", "80.00"], ["trades", "0.2", "best", "1 seed", "80.00"]]
    assert "eval eps = eps" in md and "train.val = eps" not in md


def test_by_an_unknown_setting_or_the_seed_is_one_line(tmp_path):
    a = trained(tmp_path, "a", best={"Natural": 80.0})
    trained(tmp_path, "b", {"threat.eps": 0.05}, best={"Natural": 70.0})
    assert refused(paths=[tmp_path], by="eps") == (
        "error: no run has the setting 'eps' (--by) -- hint: settings that differ between these runs: "
        "threat.eps, eval eps")
    assert refused(paths=[a], by="train.seed") == (
        "error: runs of one experiment average over train.seed; --by pivots on a setting of the experiment "
        "(--by train.seed) -- hint: e.g. --by threat.eps")


# --------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------


def test_csv_parses_with_full_keys_means_and_stds(tmp_path):
    numbers = _sweep(tmp_path / "sweep")
    text = merge_runs([tmp_path / "sweep"], checkpoint="best", format="csv")
    table = list(csv.reader(line for line in text.splitlines() if not line.startswith("#")))
    assert table[0] == ["objective", "threat.eps", "checkpoint", "seeds", "Natural", "Natural std", "PGD-20",
                        "PGD-20 std"]
    first = dict(zip(table[0], table[1]))
    pgd = [numbers["fat", 0.031, s][1] for s in (0, 1)]
    assert first["objective"] == "fat" and first["threat.eps"] == "0.031" and first["seeds"] == "2"
    assert float(first["PGD-20"]) == pytest.approx(statistics.mean(pgd))
    assert float(first["PGD-20 std"]) == pytest.approx(statistics.stdev(pgd))
    assert len(table) == 5 and text.splitlines()[-1].startswith("# Test accuracy (%)")


def test_json_has_the_per_seed_values_and_the_seeds(tmp_path):
    numbers = _sweep(tmp_path / "sweep")
    data = json.loads(merge_runs([tmp_path / "sweep"], checkpoint="best", by="threat.eps", format="json"))
    assert data["format"] == "advc-table" and data["by"] == "threat.eps"
    trades = next(r for r in data["rows"] if r["objective"] == "trades")
    cell = next(c for c in trades["cells"] if c["column"] == "Natural @ eps=0.0627")
    assert cell["values"] == [numbers["trades", 0.0627, s][0] for s in (0, 1)] and cell["seeds"] == [0, 1]
    assert cell["by"] == {"threat.eps": 0.0627} and cell["attack"] == "Natural"
    assert cell["mean"] == pytest.approx(statistics.mean(cell["values"]))
    assert cell["std"] == pytest.approx(statistics.stdev(cell["values"]))
    assert cell["runs"] == [str(tmp_path / "sweep" / f"trades-0.0627-{s}") for s in (0, 1)]


def test_latex_is_a_booktabs_tabular_with_math_mean_pm_std(tmp_path):
    numbers = _sweep(tmp_path / "sweep")
    tex = merge_runs([tmp_path / "sweep"], checkpoint="best", by="threat.eps", format="latex")
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{llrrrrr}" and lines[1] == r"\toprule"
    assert lines[2] == r" &  &  & \multicolumn{2}{c}{eps $=$ 0.031} & \multicolumn{2}{c}{eps $=$ 0.0627} \\"
    assert lines[3] == r"\cmidrule(lr){4-5} \cmidrule(lr){6-7}"
    assert lines[4] == r"Objective & Checkpoint & Seeds & Natural & PGD-20 & Natural & PGD-20 \\"
    nat = [numbers["fat", 0.031, s][0] for s in (0, 1)]
    mean, std = statistics.mean(nat), statistics.stdev(nat)
    assert lines[6].startswith(f"fat & best & 2 & ${mean:.2f} \\pm {std:.2f}$ & ")
    assert r"\bottomrule" in lines and r"\end{tabular}" in lines
    assert lines[-1].startswith("% Test accuracy")


def test_latex_escapes_what_tex_would_read_as_commands(tmp_path):
    trained(tmp_path, "a", {"objective": "gair_fat", "form.tau": "50%"}, best={"Natural": 80.0, "CW∞": 40.0},
            attacks="natural cw")
    trained(tmp_path, "b", {"objective": "gair_fat"}, best={"Natural": 81.0, "CW∞": 41.0}, attacks="natural cw")
    tex = merge_runs([tmp_path], checkpoint="best", format="latex")
    assert r"gair\_fat & 50\% & best & 1 & $80.00$ & $40.00$ \\" in tex
    assert r"CW$\infty$" in tex


def test_unknown_checkpoint_or_format_is_one_line(tmp_path):
    run = trained(tmp_path, "a", best={"Natural": 80.0})
    assert refused(paths=[run], checkpoint="first") == (
        "error: unknown checkpoint 'first' (--checkpoint) -- hint: best, last or both")
    assert refused(paths=[run], format="xls") == (
        "error: unknown table format 'xls' (--format) -- hint: md, csv, json or latex")


# --------------------------------------------------------------------------------------
# folders that are no (current) run
# --------------------------------------------------------------------------------------

NOT_A_RUN_HINT = ("hint: name a folder written by advc run, or a folder holding such folders; a run from before "
                  "run.json was recorded has no experiment to group by: run it again")


def test_a_folder_without_run_json_is_refused(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / RESULTS_FILE).write_text("{}", encoding="utf-8")  # a run of an advc from before run.json
    assert refused(paths=[old]) == f"error: not an advc run folder: no run.json ({old}) -- {NOT_A_RUN_HINT}"


def test_a_sweep_folder_holding_an_old_run_is_refused_naming_it(tmp_path):
    trained(tmp_path / "sweep", "new", best={"Natural": 80.0})
    (tmp_path / "sweep" / "old" / "checkpoints").mkdir(parents=True)
    assert refused(paths=[tmp_path / "sweep"]) == (
        f"error: not an advc run folder: no run.json ({tmp_path / 'sweep' / 'old'}) -- {NOT_A_RUN_HINT}")


def test_a_missing_folder_or_none_is_one_line(tmp_path):
    assert refused(paths=[tmp_path / "nope"]) == (
        f"error: no such run folder ({tmp_path / 'nope'}) -- hint: name a folder written by advc run, or a folder "
        "holding such folders")
    assert refused(paths=[]) == "error: no run folders given (advc table) -- hint: name run folders or a sweep folder"


@pytest.mark.parametrize("content, message", [
    ("{not json", "run.json is unreadable: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (json.dumps({"format": "other"}), "run.json field 'format' is not 'advc-run'"),
    (json.dumps({"format": "advc-run", "seed": 0, "experiment": BASE, "advc_version": "0.1.0"}),
     "run.json field 'experiment_id' must be a non-empty string"),
    (json.dumps({"format": "advc-run", "seed": 0, "experiment_id": "ab", "experiment": {"threat.eps": 0.1},
                 "advc_version": "0.1.0"}), "run.json field 'experiment' must be an object of plain settings naming the objective"),
    (json.dumps({"format": "advc-run", "seed": "0", "experiment_id": "ab", "experiment": BASE, "advc_version": "0.1.0"}),
     "run.json field 'seed' must be an integer"),
    (json.dumps({"format": "advc-run", "seed": 0, "experiment_id": "ab", "experiment": BASE}),
     "run.json field 'advc_version' must be a non-empty string"),
])
def test_a_damaged_run_json_is_one_line_naming_it(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(content, encoding="utf-8")
    hint = "the run folder was edited or damaged; evaluate a checkpoint with --spec, or run it again"
    assert refused(paths=[run]) == f"error: {message} ({run / 'run.json'}) -- hint: {hint}"


def test_a_bad_attack_list_gets_the_located_diagnostic(tmp_path):
    run = trained(tmp_path, "a", best={"Natural": 80.0})
    with pytest.raises(AdvcError) as info:
        merge_runs([run], attacks="natural pgdd(steps = 3)")
    assert not isinstance(info.value, UserError)  # the checker's diagnostic, with its caret
    assert "--attacks:1:9: error: unknown evaluation attack 'pgdd'" in info.value.render()


def test_the_command_line_prints_the_table_or_one_error_line(tmp_path):
    run = trained(tmp_path, "a", best={"Natural": 80.0})
    done = advc("table", run, "--checkpoint", "best", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["objective,checkpoint,seeds,Natural,Natural std", "fat,best,1,80.0,"]
    empty = tmp_path / "empty"
    empty.mkdir()
    done = advc("table", run, empty)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: not an advc run folder: no run.json ({empty}) -- {NOT_A_RUN_HINT}\n"


# --------------------------------------------------------------------------------------
# real runs through the command line (the Done-when)
# --------------------------------------------------------------------------------------

CHEAP = "natural pgd(steps = 5)"


@pytest.fixture(scope="module")
def quickstart_runs(tmp_path_factory) -> dict[str, Path]:
    """1-epoch quickstart runs: ε 0.1 with seeds 0, 1, 2 and ε 0.05 with seed 1."""
    root = tmp_path_factory.mktemp("table-runs")
    runs = {"eps0.1-seed0": [], "eps0.05-seed1": ["threat.eps=0.05", "train.seed=1"],
            "eps0.1-seed1": ["train.seed=1"], "eps0.1-seed2": ["train.seed=2"]}
    for name, sets in runs.items():
        extra = [x for s in sets for x in ("--set", s)]
        done = advc("run", QUICKSTART, "--set", "train.epochs=1", "--set", f"evaluate={CHEAP}", *extra,
                    "--eval-n", "50", "--quiet", "--out", root / name)
        assert done.returncode == 0, done.stderr
    return {name: root / name for name in runs}


@pytest.mark.slow
def test_two_runs_differing_in_eps_and_seed_are_two_rows_showing_eps(quickstart_runs):
    a, b = quickstart_runs["eps0.1-seed0"], quickstart_runs["eps0.05-seed1"]
    done = advc("table", a, b, "--checkpoint", "best")
    assert done.returncode == 0, done.stderr
    rows = rows_of(done.stdout)
    assert rows[0] == ["Objective", "eps", "Checkpoint", "Seeds", "Natural", "PGD-5"]
    own = {run: json.loads((run / RESULTS_FILE).read_text())["checkpoints"]["best"] for run in (a, b)}
    assert rows[2:] == [
        ["quickstart", "0.05", "best", "1 seed", f"{own[b]['Natural']:.2f}", f"{own[b]['PGD-5']:.2f}"],
        ["quickstart", "0.1", "best", "1 seed", f"{own[a]['Natural']:.2f}", f"{own[a]['PGD-5']:.2f}"],
    ]
    assert "n=50" in done.stdout and "eval eps = eps" in done.stdout


@pytest.mark.slow
def test_three_seeds_of_one_experiment_are_one_row_with_mean_and_std_of_their_results(quickstart_runs):
    runs = [quickstart_runs[f"eps0.1-seed{s}"] for s in range(3)]
    done = advc("table", *runs)
    assert done.returncode == 0, done.stderr
    rows = by_row(done.stdout, 3)
    for checkpoint in ("best", "last"):
        own = [json.loads((run / RESULTS_FILE).read_text())["checkpoints"][checkpoint] for run in runs]
        assert rows[("quickstart", checkpoint, "3 seeds")] == [ms([r[label] for r in own]) for label in ("Natural", "PGD-5")]
    assert len(rows) == 2


@pytest.mark.slow
def test_eval_with_attacks_then_table_with_those_attacks_prints_those_numbers(quickstart_runs):
    runs = [quickstart_runs[f"eps0.1-seed{s}"] for s in range(2)]
    for run in runs:
        done = advc("eval", run, "--attacks", "natural pgd(steps = 3)", "--n", "40", "--no-sanity")
        assert done.returncode == 0, done.stderr
    kept = [next(e for e in reversed(load_evaluations(run)) if e["checkpoint"] == "best") for run in runs]
    assert all(e["attacks"] == "natural pgd(steps = 3)" and e["n"] == 40 for e in kept)
    done = advc("table", *runs, quickstart_runs["eps0.05-seed1"], "--attacks", "natural pgd(steps=3)",
                "--checkpoint", "best")
    assert done.returncode == 0, done.stderr
    assert by_row(done.stdout, 3) == {("quickstart", "best", "2 seeds"): [
        ms([e["results"][label] for e in kept]) for label in ("Natural", "PGD-3")]}
    assert "n=40" in done.stdout
    assert f"left out of best (no kept evaluation with the attacks 'natural pgd(steps = 3)'): " \
           f"{quickstart_runs['eps0.05-seed1']}" in done.stdout


# --------------------------------------------------------------------------------------
# --cost: what training cost, from metrics.jsonl
# --------------------------------------------------------------------------------------


def metrics(run: Path, rows: list[dict]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def epochs_of(bps: list[float], seconds: list[float]) -> list[dict]:
    return [{"epoch": e, "bps_per_sample": b, "seconds": s} for e, (b, s) in enumerate(zip(bps, seconds))]


def test_cost_sums_each_runs_epochs_and_averages_the_seeds(tmp_path):
    runs = []
    for s, (bps, secs) in enumerate([([3.0, 4.0], [1.0, 2.0]), ([3.5, 4.5], [1.5, 2.5])]):
        run = trained(tmp_path, f"fat-{s}", {"train.epochs": 2}, seed=s, best={"Natural": 80.0, "PGD-20": 40.0})
        metrics(run, epochs_of(bps, secs))
        runs.append(run)
    md = merge_runs(runs, cost=True)
    assert rows_of(md)[0][-2:] == ["BPs/sample", "train s"]
    assert by_row(md, 3)[("fat", "best", "2 seeds")][-2:] == [ms([7.0, 8.0]), ms([3.0, 4.0])]
    assert "BPs/sample: backward passes per training sample over all epochs" in md
    assert "BPs/sample" not in merge_runs(runs)  # only when asked for
    data = json.loads(merge_runs(runs, cost=True, format="json"))
    cell = next(c for c in data["rows"][0]["cells"] if c["column"] == "BPs/sample")
    assert cell["values"] == [7.0, 8.0] and cell["seeds"] == [0, 1]


@pytest.mark.parametrize("rows, why", [
    ([], "metrics.jsonl does not record epochs 0-1 once each"),
    ([{"epoch": 0, "bps_per_sample": 3.0, "seconds": 1.0}], "metrics.jsonl does not record epochs 0-1 once each"),
    (epochs_of([3.0, 3.0], [1.0, 1.0]) + epochs_of([3.0], [1.0]), "metrics.jsonl does not record epochs 0-1 once each"),
    (epochs_of([3.0, float("nan")], [1.0, 1.0]), "metrics.jsonl epoch 1: bps_per_sample is not a finite number >= 0"),
    (epochs_of([3.0, 3.0], [1.0, -1.0]), "metrics.jsonl epoch 1: seconds is not a finite number >= 0"),
    # a row with a non-number in it is no epoch record at all (folders.read_metrics skips it)
    (epochs_of([3.0, "3"], [1.0, 1.0]), "metrics.jsonl does not record epochs 0-1 once each"),
])
def test_a_run_without_a_whole_training_record_shows_no_cost_and_its_seeds_no_mean(tmp_path, rows, why):
    good = trained(tmp_path, "fat-0", {"train.epochs": 2}, seed=0, best={"Natural": 80.0})
    metrics(good, epochs_of([3.0, 4.0], [1.0, 2.0]))
    bad = trained(tmp_path, "fat-1", {"train.epochs": 2}, seed=1, best={"Natural": 82.0})
    metrics(bad, rows)
    md = merge_runs([good, bad], cost=True)
    assert by_row(md, 3)[("fat", "best", "2 seeds")] == [ms([80.0, 82.0]), "-", "-"]
    assert f"- {bad}: no training cost: {why}\n" in md
