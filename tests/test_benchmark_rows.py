"""The benchmark rows are the one copy of each measured number: the pages render from them, every row is whole.

``scripts/benchrows.py`` renders docs/benchmarks.md's (and README's) tables from ``benchmarks/rows/*.jsonl``;
these tests fail when a page was edited by hand or a row was added without rendering, when a row lacks its
command, machine or date, and when a page cites a row id that does not exist.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
benchrows = importlib.import_module("benchrows")

TABLES = benchrows.load_tables()
ROWS = [r for rows in TABLES.values() for r in rows]


def test_there_are_rows_and_every_page_marker_names_a_rows_file():
    assert ROWS, "benchmarks/rows/ holds no row"
    for page in benchrows.PAGES:
        for m in benchrows.MARKER.finditer(page.read_text()):
            assert m["table"] in TABLES, f"{page.name}: marker for missing {m['table']}.jsonl"


@pytest.mark.parametrize("page", benchrows.PAGES, ids=lambda p: p.name)
def test_each_page_equals_its_rendering_from_the_rows(page):
    text = page.read_text()
    assert benchrows.render_page(text, TABLES) == text, (
        f"{page.name} and benchmarks/rows/ disagree: run `.venv/bin/python scripts/benchrows.py`")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.get("id", "?"))
def test_every_row_has_id_command_machine_date_and_numbers(row):
    assert benchrows.check_row(row) == []
    assert isinstance(row["numbers"], dict) and row["numbers"]


def test_row_ids_are_unique_across_tables():
    ids = [r["id"] for r in ROWS]
    assert sorted({i for i in ids if ids.count(i) > 1}) == []
    assert benchrows.problems() == []


# ------------------------------------------------------------------------------ the checks can fail


def test_a_hand_edited_table_cell_is_caught():
    page = benchrows.PAGES[0]
    text = page.read_text()
    row = next(r for r in ROWS if "mAP50" in r["numbers"] and isinstance(r["numbers"]["mAP50"], float))
    cell = benchrows.fmt(row["numbers"]["mAP50"])
    edited = text.replace(f"| {cell} |", "| 0.999 |", 1)
    assert edited != text
    assert benchrows.render_page(edited, TABLES) == text  # rendering restores it: the test above would fail


def test_an_incomplete_row_is_reported(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "a", "command": "", "date": "Dec 3", "numbers": {"x": 1}}) + "\n")
    page = tmp_path / "p.md"
    page.write_text("<!-- rows t: id x -->\n<!-- /rows -->\n")
    found = benchrows.problems(tmp_path, [page])
    assert any("no command" in p for p in found) and any("no machine" in p for p in found)
    assert any("not YYYY-MM-DD" in p for p in found) and any("differ from the rows" in p for p in found)


def test_append_row_is_atomic_refuses_a_duplicate_and_renders(tmp_path):
    rows = tmp_path / "bench.jsonl"
    first = benchrows.make_row("b-1", "python3 scripts/x.py", {"img_s": 9.5, "range": [1.0, 1.2]}, note="n")
    assert first["date"] and first["machine"]  # today, this machine
    benchrows.append_row(rows, first)
    benchrows.append_row(rows, benchrows.make_row("b-2", "python3 scripts/x.py --n 2", {"img_s": 10.0},
                                                  machine="m", date="2026-12-01"))
    assert [r["id"] for r in benchrows.read_rows(rows)] == ["b-1", "b-2"]
    with pytest.raises(ValueError, match="already there"):
        benchrows.append_row(rows, first)
    benchrows.append_row(rows, {**first, "numbers": {"img_s": 9.6}}, replace=True)
    assert benchrows.read_rows(rows)[0]["numbers"] == {"img_s": 9.6}
    with pytest.raises(ValueError, match="no command"):
        benchrows.append_row(rows, {**first, "id": "b-3", "command": ""})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.jsonl"]  # no temporary file left behind
    page = "x\n<!-- rows bench: id img_s command @b-2 -->\nstale\n<!-- /rows -->\ny\n"
    out = benchrows.render_page(page, {"bench": benchrows.read_rows(rows)})
    assert "| b-2 | 10.0 | `python3 scripts/x.py --n 2` |" in out and "stale" not in out and "b-1" not in out
    assert out.startswith("x\n") and out.endswith("<!-- /rows -->\ny\n")
