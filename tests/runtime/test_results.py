"""Result tables: the on-disk results.json, Markdown like the papers' tables, seed merging."""

from __future__ import annotations

import json
import statistics

import pytest

from advc.errors import UserError
from advc.runtime.results import (
    CANONICAL_COLUMNS,
    RESULTS_FILE,
    Row,
    format_cell,
    load_results,
    merge_runs,
    results_json,
    results_markdown,
    run_markdown,
    sanity_markdown,
    write_results,
)


def _write_run(tmp_path, name, spec, seed, best, last=None, sanity=None, n=100):
    run = tmp_path / name
    checkpoints = {"best": best}
    if last is not None:
        checkpoints["last"] = last
    write_results(run, spec, seed, checkpoints, n=n, sanity=sanity)
    return run


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_format_cell_single_and_mean_std():
    assert format_cell(87.3) == "87.30"
    assert format_cell([87.3]) == "87.30"
    values = [89.1, 89.5, 89.42]
    expected = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert format_cell(values) == expected
    # sample std (n - 1): for 1 and 3 the std is sqrt(2) = 1.41
    assert format_cell([1.0, 3.0]) == "2.00 ± 1.41"
    assert format_cell(None) == "-"
    assert format_cell([]) == "-"


def test_markdown_columns_in_canonical_order_only_those_present():
    rows = [
        Row("best", {"AA": 41.0, "PGD-20": 50.5, "Natural": 87.3, "Square": 60.0}),
        Row("last", {"Natural": 86.0, "CW∞": 48.25}),
    ]
    table = _table_rows(results_markdown(rows, first_column="Checkpoint"))
    header, sep, best, last = table
    assert header == ["Checkpoint", "Natural", "PGD-20", "CW∞", "AA", "Square"]
    assert all(set(c) == {"-"} for c in sep)
    assert best == ["best", "87.30", "50.50", "-", "41.00", "60.00"]
    assert last == ["last", "86.00", "-", "48.25", "-", "-"]
    assert CANONICAL_COLUMNS == ("Natural", "FGSM", "PGD-20", "CW∞", "PGD-100", "AA")


def test_one_run_roundtrip_and_markdown(tmp_path):
    sanity = {
        "best": [
            {"name": "monotone-in-eps", "status": "pass", "detail": "ok"},
            {"name": "black-box-not-stronger", "status": "warn", "detail": "Square 10"},
        ]
    }
    run = _write_run(
        tmp_path,
        "run0",
        "fat",
        0,
        {"Natural": 89.34, "FGSM": 65.52, "PGD-20": 46.13},
        last={"Natural": 88.0, "PGD-20": 45.0},
        sanity=sanity,
        n=500,
    )
    data = json.loads((run / RESULTS_FILE).read_text(encoding="utf-8"))
    assert data["spec"] == "fat" and data["seed"] == 0 and data["n"] == 500
    assert data["checkpoints"]["best"]["PGD-20"] == 46.13
    assert not list(run.glob(".results-*")), "the temporary file of the atomic write is gone"

    res = load_results(run)
    assert res.checkpoints["last"] == {"Natural": 88.0, "PGD-20": 45.0}
    assert load_results(run / RESULTS_FILE).spec == "fat"
    md = run_markdown(res)
    rows = _table_rows(md)
    assert rows[0] == ["Checkpoint", "Natural", "FGSM", "PGD-20"]
    assert rows[2] == ["best", "89.34", "65.52", "46.13"]
    assert rows[3] == ["last", "88.00", "-", "45.00"]
    assert "warn" in md and "black-box-not-stronger" in md


def test_merge_runs_mean_std_over_seeds(tmp_path):
    nat = [89.1, 89.5, 89.42]
    pgd = [46.0, 46.5, 45.9]
    runs = [
        _write_run(
            tmp_path,
            f"fat{s}",
            "fat",
            s,
            {"Natural": nat[s], "PGD-20": pgd[s]},
            last={"Natural": nat[s] - 1},
        )
        for s in range(3)
    ]
    runs.append(
        _write_run(tmp_path, "madry0", "madry", 0, {"Natural": 87.3, "PGD-20": 45.8, "AA": 44.0})
    )
    md = merge_runs(runs)
    rows = _table_rows(md)
    assert rows[0] == ["Defense", "Natural", "PGD-20", "AA"]
    by_name = {r[0]: r[1:] for r in rows[2:]}
    assert by_name["fat (best, 3 seeds)"] == [
        f"{statistics.mean(nat):.2f} ± {statistics.stdev(nat):.2f}",
        f"{statistics.mean(pgd):.2f} ± {statistics.stdev(pgd):.2f}",
        "-",
    ]
    assert by_name["fat (last, 3 seeds)"][0] == (
        f"{statistics.mean(nat) - 1:.2f} ± {statistics.stdev([v - 1 for v in nat]):.2f}"
    )
    assert by_name["madry (best, 1 seed)"] == ["87.30", "45.80", "44.00"]
    assert list(by_name) == ["fat (best, 3 seeds)", "fat (last, 3 seeds)", "madry (best, 1 seed)"]


def test_merge_lists_sanity_warnings(tmp_path):
    warn = {"best": [{"name": "black-box-not-stronger", "status": "warn", "detail": "Square 3.00"}]}
    a = _write_run(tmp_path, "a", "gairat", 0, {"PGD-20": 50.0}, sanity=warn)
    b = _write_run(tmp_path, "b", "gairat", 1, {"PGD-20": 52.0})
    md = merge_runs([a, b])
    assert "Sanity warnings" in md and "gairat seed 0 (best)" in md and "Square 3.00" in md


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "no results file"),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"spec": "fat", "seed": 0, "n": 10}), "'checkpoints'"),
        (json.dumps({"spec": "fat", "seed": "zero", "n": 10, "checkpoints": {}}), "'seed'"),
        (
            json.dumps(
                {"spec": "fat", "seed": 0, "n": 10, "checkpoints": {"best": {"PGD-20": "high"}}}
            ),
            "checkpoints.best.PGD-20",
        ),
        (
            json.dumps(
                {"spec": "fat", "seed": 0, "n": 10, "checkpoints": {"best": {"PGD-20": 120}}}
            ),
            "[0, 100]",
        ),
        (
            json.dumps(
                {
                    "spec": "fat",
                    "seed": 0,
                    "n": 10,
                    "checkpoints": {},
                    "sanity": {"best": [{"name": "x", "status": "maybe"}]},
                }
            ),
            "sanity.best",
        ),
    ],
)
def test_missing_or_malformed_file_is_a_user_error_naming_it(tmp_path, content, fragment):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / RESULTS_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as info:
        merge_runs([run])
    err = info.value
    assert fragment in err.message
    assert str(run / RESULTS_FILE) in err.render()


def test_same_spec_and_seed_twice_is_refused(tmp_path):
    a = _write_run(tmp_path, "a", "fat", 0, {"PGD-20": 50.0})
    b = _write_run(tmp_path, "b", "fat", 0, {"PGD-20": 51.0})
    with pytest.raises(UserError, match="seed 0"):
        merge_runs([a, b])


def test_results_json_validates_what_it_writes():
    text = results_json("trades", 3, {"best": {"Natural": 84.92}}, n=10)
    assert json.loads(text)["checkpoints"] == {"best": {"Natural": 84.92}}
    with pytest.raises(UserError):
        results_json("trades", 3, {"best": {"Natural": float("nan")}}, n=10)


def test_sanity_markdown_renders_objects_and_dicts():
    class C:  # duck-typed like advc.runtime.evaluate.Check
        name, status, detail = "eps0-equals-natural", "pass", "PGD-20 at ε=0: 90.00"

    md = sanity_markdown([C(), {"name": "monotone-in-eps", "status": "warn", "detail": "rises"}])
    lines = md.strip().splitlines()
    assert lines[0] == "- **pass** `eps0-equals-natural`: PGD-20 at ε=0: 90.00"
    assert "warn" in lines[1] and "`monotone-in-eps`: rises" in lines[1]
    assert sanity_markdown([]) == ""
