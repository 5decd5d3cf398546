"""Result tables: the on-disk results.json and Markdown like the papers' tables (tables over many
runs, by experiment: test_table.py)."""

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
    order_columns,
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


def test_column_order_is_the_papers_then_first_appearance_each_once():
    assert order_columns(["Square", "PGD-20", "Natural", "Square", "AA", "PGD-5"]) == [
        "Natural", "PGD-20", "AA", "Square", "PGD-5"]


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
        load_results(run)
    err = info.value
    assert fragment in err.message
    assert str(run / RESULTS_FILE) in err.render()


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
