"""Benchmark rows: the one place a measured number lives, and the tables rendered from them.

A row is one measurement, one JSON object a line in ``benchmarks/rows/TABLE.jsonl``::

    {"id": "recipe-30", "command": "python3 scripts/bench.py cardd-cpu ...", "machine": "2-core AMD EPYC ...",
     "date": "2026-12-03", "numbers": {"epochs": 18, "mAP50": 0.461, ...}, "note": "..."}

``id``, ``command``, ``machine``, ``date`` (YYYY-MM-DD) and ``numbers`` are required; ``time`` (the hours it
ran), ``note`` and ``rerun`` are optional. ``rerun`` is today's command for the same numbers when the one the
row was measured with names a script since folded into ``scripts/bench.py``: tables show it as the command,
and the note names the script the row was measured with. A benchmark script makes one with :func:`make_row` and adds it with
:func:`append_row` (atomic: the file is written to a temporary sibling and renamed). README, configs and
docstrings cite a row by its id; they never copy its numbers.

Pages hold hand-written prose and generated tables. A table sits between two markers that name the rows
file and the columns (keys of ``numbers``; ``numbers`` for all of them in one cell; ``id``, ``date``, ``time``,
``command``, ``machine``, ``note``; ``KEY:N`` shows N decimals), optionally the rows (``@ID``; default: every row of the file), and
``-notes`` to leave the rows' notes out::

    <!-- rows cardd-cpu: id memory budget_min epochs mAP50:3 command @recipe-30 @recipe-60 -->
    ... generated ...
    <!-- /rows -->

Run:
    .venv/bin/python scripts/benchrows.py            # render every page's tables from the rows
    .venv/bin/python scripts/benchrows.py --check    # exit 1 when a page and the rows disagree, or a row is incomplete

Examples:
    >>> r = make_row("x", "make demo", {"total_s": 161.8}, machine="m", date="2026-12-01")
    >>> render_table([r], ["id", "total_s", "command"]).splitlines()[2]
    '| x | 161.8 | `make demo` |'
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS_DIR = ROOT / "benchmarks" / "rows"
#: the pages whose tables are generated from the rows
PAGES = (ROOT / "docs" / "benchmarks.md", ROOT / "README.md", ROOT / "docs" / "robustness.md", ROOT / "docs" / "atlas.md",
         ROOT / "docs" / "explore.md")
REQUIRED = ("id", "command", "machine", "date", "numbers")
META = ("id", "date", "time", "command", "machine", "note", "rerun")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MARKER = re.compile(r"(<!-- rows (?P<table>[\w.-]+): (?P<cols>[^>]*?) -->\n)(?P<body>.*?)(<!-- /rows -->)", re.S)


def machine() -> str:
    """This machine in words: CPU model, cores, and the versions that decide the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()}-core {cpu}", f"Python {platform.python_version()}"]
    for mod in ("torch", "ultralytics"):
        m = sys.modules.get(mod)
        if m is not None:
            parts.append(f"{mod} {m.__version__}")
    return ", ".join(parts)


def make_row(id: str, command: str, numbers: dict, *, note: str = "", machine: str | None = None,
             date: str | None = None, time: str | None = None) -> dict:
    """A row for :func:`append_row`; ``machine`` and ``date`` default to this machine and today (UTC)."""
    row = {"id": id, "command": command, "machine": machine or globals()["machine"](),
           "date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"), "numbers": numbers}
    if time:
        row["time"] = time
    if note:
        row["note"] = note
    problems = check_row(row)
    if problems:
        raise ValueError(f"row {id!r}: {'; '.join(problems)}")
    return row


def check_row(row: dict) -> list[str]:
    """What a row lacks: the required keys, a YYYY-MM-DD date, a non-empty command, some numbers."""
    problems = [f"no {key}" for key in REQUIRED if not row.get(key)]
    if row.get("date") and not DATE.match(str(row["date"])):
        problems.append(f"date {row['date']!r} is not YYYY-MM-DD")
    if "numbers" in row and not isinstance(row["numbers"], dict):
        problems.append("numbers is not an object")
    return problems


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of one ``TABLE.jsonl`` file, in file order (a missing file has none)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_row(path: str | os.PathLike, row: dict, *, replace: bool = False) -> Path:
    """Add ``row`` to the rows file ``path``, atomically; a row with the same id is refused unless ``replace``."""
    problems = check_row(row)
    if problems:
        raise ValueError(f"row {row.get('id')!r}: {'; '.join(problems)}")
    p = Path(path)
    rows = read_rows(p)
    if any(r["id"] == row["id"] for r in rows):
        if not replace:
            raise ValueError(f"{p}: a row {row['id']!r} is already there (pick a new id, or replace=True)")
        rows = [row if r["id"] == row["id"] else r for r in rows]
    else:
        rows.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def fmt(value, digits: int | None = None) -> str:
    """One table cell: a [low, high] pair as a range, an object as 'key value, ...'; ``digits`` fixes the
    decimals of every float in it (JSON keeps 0.70 as 0.7)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if digits is not None:
            return f"{value:.{digits}f}"
        return repr(value) if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    if isinstance(value, list):
        if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return f"{fmt(value[0], digits)}-{fmt(value[1], digits)}"
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def cell(row: dict, col: str) -> str:
    """``col`` of ``row``; ``KEY:N`` shows its floats with N decimals."""
    col, _, digits = col.partition(":")
    value = row["numbers"] if col == "numbers" else row.get(col) if col in META else row["numbers"].get(col)
    if col == "command" and row.get("rerun"):
        value = row["rerun"]  # the command that measures it today; the note names the one it was measured with
    text = fmt(value, int(digits) if digits else None).replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if col == "command" and text else text


def note(row: dict) -> str:
    """A row's note; a row with a ``rerun`` also names the script it was measured with (the row keeps the command)."""
    scripts = re.findall(r"scripts/[\w.-]+\.py", row["command"]) if row.get("rerun") else []
    measured = f"measured with `{'`, `'.join(scripts)}`" if scripts else f"measured as `{row['command']}`" if row.get("rerun") else ""
    if row.get("note") and measured:
        return f"{row['note']} ({measured})"
    return row.get("note") or measured


def render_table(rows: list[dict], cols: list[str], notes: bool = True) -> str:
    """A Markdown table of ``rows``, then one line per machine they ran on and (``notes``) each row's note."""
    lines = ["| " + " | ".join(c.partition(":")[0] for c in cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    if "machine" not in cols:
        machines: dict[str, list[str]] = {}
        for r in rows:
            machines.setdefault(r.get("machine") or "not recorded", []).append(r["id"])
        lines.append("")
        for m, ids in machines.items():
            lines.append(f"Machine: {m}." if len(machines) == 1 else f"Machine of {', '.join(ids)}: {m}.")
    if notes and "note" not in cols and any(note(r) for r in rows):
        lines.append("")
        lines += [f"- **{r['id']}**: {note(r)}" for r in rows if note(r)]
    return "\n".join(lines) + "\n\n"


def load_tables(rows_dir: str | os.PathLike = ROWS_DIR) -> dict[str, list[dict]]:
    """Every rows file of ``rows_dir``, by table name (the file's stem)."""
    return {p.stem: read_rows(p) for p in sorted(Path(rows_dir).glob("*.jsonl"))}


def render_page(text: str, tables: dict[str, list[dict]]) -> str:
    """``text`` with the body of every rows marker generated again from ``tables``."""
    def one(m: re.Match) -> str:
        name = m["table"]
        if name not in tables:
            raise KeyError(f"no rows file {name}.jsonl for a marker")
        spec = m["cols"].split()
        ids = [s[1:] for s in spec if s.startswith("@")]  # @ID picks rows; none picks all
        cols = [s for s in spec if not s.startswith("@") and s != "-notes"]
        rows = [r for r in tables[name] if not ids or r["id"] in ids]
        if ids and len(rows) != len(ids):
            raise KeyError(f"{name}: no row {sorted(set(ids) - {r['id'] for r in rows})}")
        return m.group(1) + render_table(rows, cols, notes="-notes" not in spec) + m.group(5)
    return MARKER.sub(one, text)


def problems(rows_dir: str | os.PathLike = ROWS_DIR, pages=PAGES) -> list[str]:
    """Everything that disagrees: incomplete or duplicated rows, pages that differ from their rendering."""
    tables = load_tables(rows_dir)
    out, seen = [], {}
    for name, rows in tables.items():
        for r in rows:
            out += [f"{name}.jsonl: {r.get('id')!r}: {p}" for p in check_row(r)]
            if r.get("id") in seen:
                out.append(f"{name}.jsonl: id {r['id']!r} is also in {seen[r['id']]}.jsonl")
            seen[r.get("id")] = name
    for page in pages:
        text = Path(page).read_text(encoding="utf-8")
        if render_page(text, tables) != text:
            out.append(f"{page}: its tables differ from the rows (run scripts/benchrows.py)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 on any disagreement")
    args = p.parse_args(argv)
    if args.check:
        found = problems()
        for line in found:
            print(f"error: {line}", file=sys.stderr)
        return 1 if found else 0
    tables = load_tables()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        new = render_page(text, tables)
        if new != text:
            page.write_text(new, encoding="utf-8")
            print(f"rendered {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
