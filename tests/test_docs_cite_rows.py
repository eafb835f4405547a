"""What a reader meets first stays free of dated narrative, re-typed figures and build-machine paths.

A measured number lives once, as a row in ``benchmarks/rows/`` rendered into docs/benchmarks.md (and the
README's demo table). README (outside its rendered tables), configs and ``pipeline`` name a row's id
instead; these tests fail when a date or a decimal figure with a unit comes back into them, when a cited
row id does not exist, and when an instruction names a path or tool a user does not have.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
benchrows = importlib.import_module("benchrows")

DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
#: a decimal figure with a unit: 1.30x, 29.0 ms, 161.8 s, 141.3 MB, 9.55 img/s
FIGURE = re.compile(r"\b\d+\.\d+ ?(?:x|s|ms|MB|MiB|GB|GiB|img/s|images/s)(?![\w/])")
#: sizes worked out from a shape, and order-of-magnitude remarks that explain a design choice, not results:
#: (file, the text allowed)
ALLOWED = {
    ("pipeline/model/engine.py", "1.2 MB"),  # 640 x 640 x 3 bytes
    ("pipeline/report/plots/__init__.py", "4.4 GB"),  # 70 bytes a pixel x 8000 x 8000
    ("pipeline/core/runtime.py", "0.5 MB"),  # a progress-bar log's size, why bars write plain lines
    ("pipeline/core/runtime.py", "~0.2 s"),
    ("pipeline/lesson/gradients.py", "~0.2 s"),
    ("pipeline/core/photo.py", "~0.5 ms"),
    ("pipeline/model/engine.py", "~0.2 ms"),
}


def _without_rendered_tables(text: str) -> str:
    return benchrows.MARKER.sub("", text)


def _texts():
    """(path, text) of README (its rendered tables left out), the configs and every pipeline module."""
    yield "README.md", _without_rendered_tables((REPO / "README.md").read_text())
    for f in sorted((REPO / "configs").glob("*.yaml")):
        yield f"configs/{f.name}", f.read_text()
    for f in sorted((REPO / "pipeline").rglob("*.py")):
        yield str(f.relative_to(REPO)), f.read_text()


def _hits(pattern: re.Pattern) -> list[str]:
    out = []
    for name, text in _texts():
        for n, line in enumerate(text.splitlines(), 1):
            for m in pattern.finditer(line):
                start = m.start() - (1 if m.start() and line[m.start() - 1] == "~" else 0)
                if (name, line[start:m.end()]) not in ALLOWED:
                    out.append(f"{name}:{n}: {line.strip()}")
    return out


def test_no_dated_narrative_in_readme_configs_or_docstrings():
    assert _hits(DATE) == [], "a date belongs to a benchmark row (benchmarks/rows/), not to prose"


def test_no_retyped_figures_in_readme_configs_or_docstrings():
    assert _hits(FIGURE) == [], "cite the row id (benchmarks/rows/) instead of re-typing its number"


def test_the_patterns_catch_what_they_are_for():
    for text in ("ran 1.36-2.10x as fast", "29.0 vs 27.1 ms", "(scripts/bench_foundation.py, 2026-11-24)",
                 "9.55 img/s", "1548 -> 1491.0 MiB", "took 161.8 s"):
        assert FIGURE.search(text) or DATE.search(text), text
    for text in ("Ultralytics 8.4 ships", "torch==2.14.1", "lr0: 0.002", "conf 0.25", "--minutes 60", "IoU 0.99"):
        assert not (FIGURE.search(text) or DATE.search(text)), text


def test_cited_row_ids_exist():
    """A `row ID` / `rows ID, ID and ID` citation in README, docs, configs or pipeline names a real row."""
    ids = {r["id"] for rows in benchrows.load_tables().values() for r in rows}
    cite = re.compile(r"(?<![-\w])(?<!<!-- )rows? ((?:[a-z0-9]+(?:-[a-z0-9*]+)+(?:,? (?:and )?)?)+)")
    files = [REPO / "README.md", REPO / "datasets" / "README.md", REPO / "docs" / "usage.md",
             REPO / "docs" / "benchmarks.md", *(REPO / "configs").glob("*.yaml"), *(REPO / "pipeline").rglob("*.py")]
    missing = set()
    for f in files:
        for m in cite.finditer(f.read_text()):
            for name in re.findall(r"[a-z0-9]+(?:-[a-z0-9*]+)+", m.group(1)):
                found = any(i.startswith(name[:-1]) for i in ids) if name.endswith("*") else name in ids
                if not found:
                    missing.add(f"{f.relative_to(REPO)}: {name}")
    assert sorted(missing) == []


def test_readme_fits_two_screens():
    assert len((REPO / "README.md").read_text().splitlines()) <= 100


@pytest.mark.parametrize("pattern", [r"/work/", r"\.mirror", r"fetch tool", r"\bH100\b", r"device_pack", r"device_cardd",
                                     r"lent (?:a |an |to )?(?:GPU|H100|machine)"])
def test_no_instruction_names_a_build_machine_path_or_tool(pattern):
    files = [REPO / "README.md", REPO / "Makefile", REPO / "datasets" / "README.md", REPO / "docs" / "usage.md",
             REPO / "docs" / "benchmarks.md", *(REPO / "configs").glob("*.yaml"), *(REPO / "scripts").glob("*"),
             *(REPO / "pipeline").rglob("*.py"), *(REPO / "benchmarks" / "rows").glob("*.jsonl")]
    hits = [f"{f.relative_to(REPO)}:{n}" for f in files if f.is_file()
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if re.search(pattern, line)]
    assert hits == []
