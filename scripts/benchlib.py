"""The harness every ``scripts/bench.py`` target uses: child processes, alternation, medians, ratios, rows.

A measurement is a set of :class:`Variant` s, each one command a user could type. :func:`measure` runs them
as whole child processes, round by round (A B A B ..., or rotated with ``rotate``), so that drift on a
shared host hits every variant; each :class:`Run` keeps the child's wall time, its peak resident set
(``os.wait4``'s ``ru_maxrss``: the child's and the children it waited for) and its output. Linux starts a
child's ``ru_maxrss`` at its parent's own peak (the parent's memory is the child's until ``exec``), so a
child that stays below the measuring process's peak reads ``None``: keep the parent light. :func:`stats`
gives the median and minimum over rounds, :func:`ratio` the median of per-round ratios (two numbers of
the same round, never medians of different rounds), :func:`check_same` fails when variants that should
agree (the same detections) do not, and :func:`record` appends a row through ``benchrows.append_row``
with the exact command line, this machine and today's date. :func:`interleave` is the same alternation
for in-process callables (a forward pass against a recorded one).

Examples:
    >>> schedule(["a", "b"], 2)
    [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    >>> schedule(["a", "b", "c"], 2, rotate=True)
    [(0, 'a'), (0, 'b'), (0, 'c'), (1, 'b'), (1, 'c'), (1, 'a')]
    >>> ratio([2.0, 3.0, 9.0], [1.0, 1.0, 3.0])
    {'median': 3.0, 'min': 2.0, 'max': 3.0}
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "cardd-sample"  # the 100-photo CarDD sample beside the checkout
ROWS_DIR = ROOT / "benchmarks" / "rows"
START_ENV = dict(os.environ)  # before any import of Ultralytics sets OMP_NUM_THREADS: children get the caller's
sys.path.insert(0, str(ROOT / "scripts"))
import benchrows  # noqa: E402


@dataclass
class Variant:
    """One command to time. ``before`` runs (untimed) before each run, e.g. to empty a cache; ``read``
    turns a finished :class:`Run` into the output compared across variants and kept in ``Run.output``."""

    name: str
    argv: list[str]
    env: dict | None = None
    cwd: str | None = None
    before: Callable[[], Any] | None = None
    read: Callable[["Run"], Any] | None = None
    ok_rc: tuple = (0,)  # exit codes that are not a failure (``cardamage check`` exits 1 on a dataset's errors)


@dataclass
class Run:
    name: str
    round: int
    wall_s: float
    peak_rss_mb: float | None  # None: below the parent's own peak, which Linux counts as the child's floor
    rc: int
    log: str
    started: float  # time.time() just before the child started: the child's own stamps are on this clock
    output: Any = None
    extra: dict = field(default_factory=dict)


def child_env(**extra) -> dict:
    """This environment with the checkout first on PYTHONPATH (children import this tree's ``pipeline``)."""
    env = dict(START_ENV, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def own_peak_mb() -> float:
    """This process's peak resident set (VmHWM), MiB: the floor of every child's ``ru_maxrss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Child:
    p: subprocess.Popen
    out: Any  # the file its stdout and stderr go to
    started: float
    floor_mb: float


def spawn(argv: list[str], env: dict | None = None, cwd=None, log=None) -> Child:
    """Start ``argv``; stdout and stderr go to ``log`` (a path) or a temporary file."""
    out = open(log, "w+b") if log else tempfile.TemporaryFile()
    floor, started = own_peak_mb(), time.time()
    return Child(subprocess.Popen(argv, env=env or child_env(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT), out, started, floor)


def reap(child: Child, name: str = "", round: int = 0, timeout: float | None = None) -> Run:
    """Wait for ``p`` with ``os.wait4`` (its peak RSS comes with it) and read its log; after ``timeout``
    seconds it is killed."""
    p, out, started = child.p, child.out, child.started
    deadline = None if timeout is None else time.time() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            p.kill()
            deadline = None
        time.sleep(0.05)
    wall = time.time() - started
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    log, floor = out.read().decode(errors="replace"), child.floor_mb
    out.close()
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    return Run(name, round, wall, peak if peak > floor + 1 else None, p.returncode, log, started)


def run_child(argv: list[str], env: dict | None = None, cwd=None, log=None, name: str = "", round: int = 0) -> Run:
    """One whole child process, timed from start to exit, with its peak RSS (MiB)."""
    return reap(spawn(argv, env, cwd, log), name=name, round=round)


def schedule(names: list[str], rounds: int, rotate: bool = False) -> list[tuple[int, str]]:
    """(round, name) in running order: every variant once per round; ``rotate`` starts round k at the k-th."""
    out = []
    for k in range(rounds):
        order = names[k % len(names):] + names[: k % len(names)] if rotate else list(names)
        out += [(k, n) for n in order]
    return out


def measure(variants: list[Variant], rounds: int, rotate: bool = False, warmup: bool = False,
            quiet: bool = False) -> dict[str, list[Run]]:
    """Run every variant ``rounds`` times, alternating; a failed child stops the benchmark with its log.
    ``warmup`` runs each once first, untimed (file cache, compiled kernels, a graph cache to fill)."""
    by = {v.name: v for v in variants}
    runs: dict[str, list[Run]] = {v.name: [] for v in variants}
    plan = ([(-1, v.name) for v in variants] if warmup else []) + schedule([v.name for v in variants], rounds, rotate)
    for k, name in plan:
        v = by[name]
        if v.before:
            v.before()
        r = run_child(v.argv, v.env, v.cwd, name=name, round=k)
        if r.rc not in v.ok_rc:
            raise SystemExit(f"{name} failed (exit {r.rc}): {shlex.join(v.argv)}\n{r.log[-3000:]}")
        if v.read:
            r.output = v.read(r)
        if k >= 0:
            runs[name].append(r)
        if not quiet:
            print(f"  {'warm-up' if k < 0 else f'round {k + 1}'} {name}: {r.wall_s:.2f} s, peak RSS {mib(r.peak_rss_mb)}", flush=True)
    return runs


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, warmup: bool = True) -> dict[str, dict[str, list[float]]]:
    """In-process twin of :func:`measure`: each callable once per round, in order (``warmup``: one untimed
    call of each first); per callable its ``wall`` and ``cpu`` seconds (this process's CPU time) per round."""
    if warmup:
        for f in fns.values():
            f()
    times = {k: {"wall": [], "cpu": []} for k in fns}
    for _, k in schedule(list(fns), rounds):
        w, c = time.perf_counter(), time.process_time()
        fns[k]()
        times[k]["cpu"].append(time.process_time() - c)
        times[k]["wall"].append(time.perf_counter() - w)
    return times


def stats(values: list[float]) -> dict:
    """Median, minimum and maximum of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(num: list[float], den: list[float]) -> dict:
    """Per-round ratios ``num[k] / den[k]``: their median, minimum and maximum."""
    if len(num) != len(den) or not num:
        raise ValueError(f"ratio of {len(num)} and {len(den)} rounds")
    return stats([a / b for a, b in zip(num, den)])


def mib(value: float | None) -> str:
    return "below the parent's" if value is None else f"{value:.0f} MiB"


def walls(runs: list[Run]) -> list[float]:
    return [r.wall_s for r in runs]


def summarize(runs: dict[str, list[Run]], base: str | None = None, digits: int = 2) -> dict:
    """Numbers of a measurement: per variant ``NAME_s`` (median wall), ``NAME_s_min``, ``NAME_rss_MB`` (peak);
    with ``base``, ``NAME_over_BASE``: the median per-round wall ratio (above 1: ``base`` was faster)."""
    out = {}
    for name, rs in runs.items():
        s = stats(walls(rs))
        out[f"{name}_s"], out[f"{name}_s_min"] = round(s["median"], digits), round(s["min"], digits)
        peaks = [r.peak_rss_mb for r in rs if r.peak_rss_mb is not None]
        out[f"{name}_rss_MB"] = round(max(peaks)) if peaks else None
    if base:
        for name, rs in runs.items():
            if name != base:
                out[f"{name}_over_{base}"] = round(ratio(walls(rs), walls(runs[base]))["median"], 3)
    return out


class OutputsDiffer(AssertionError):
    pass


def check_same(outputs: dict[str, Any], same: Callable[[Any, Any], bool] | None = None, reference: str | None = None) -> None:
    """Raise :class:`OutputsDiffer` naming every output that differs from ``reference``'s (default: the first);
    ``same(reference_output, other_output)`` decides (default ``==``)."""
    same = same or (lambda a, b: a == b)
    ref = reference or next(iter(outputs))
    bad = [n for n, o in outputs.items() if n != ref and not same(outputs[ref], o)]
    if bad:
        raise OutputsDiffer(f"output of {', '.join(bad)} differs from {ref}'s")


def machine() -> str:
    """This machine in words, gathered here: CPU model, cores, memory, GPU or not, and the versions that
    decide the numbers (read from the installed packages, nothing imported)."""
    cpu = platform.machine()
    mem = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "NVIDIA GPU" if Path("/proc/driver/nvidia").exists() else "no GPU"
    versions = []
    for dist in ("torch", "torchvision", "ultralytics", "onnxruntime", "openvino"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{cores}-core {cpu}{mem}, {gpu}; Python {platform.python_version()}, {', '.join(versions)}"


def command_line(argv: list[str], env_keys=("OMP_NUM_THREADS",)) -> str:
    """The command that reproduces a run: the thread settings the caller gave, then ``scripts/bench.py`` and
    its arguments without ``--record`` and its file (re-running it prints the numbers, and records them
    again only when asked)."""
    kept, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--record":
            skip = i + 1 < len(argv) and argv[i + 1].endswith(".jsonl")
            continue
        if a.startswith("--record="):
            continue
        kept.append(a)
    env = [f"{k}={shlex.quote(START_ENV[k])}" for k in env_keys if k in START_ENV]
    return " ".join([*env, ".venv/bin/python", "scripts/bench.py", *map(shlex.quote, kept)])


def record(table: str | os.PathLike, id: str, argv: list[str], numbers: dict, note: str = "",
           rows_dir: Path = ROWS_DIR, render: bool = True) -> dict:
    """Append a row to ``TABLE.jsonl`` (``table`` may also be a path): ``id`` (``id-DATE``, then ``id-DATE-2``...
    when taken), the command line of ``argv``, this machine, today; then render the pages from the rows."""
    path = Path(table) if str(table).endswith(".jsonl") else Path(rows_dir) / f"{table}.jsonl"
    load = f"load average {os.getloadavg()[0]:.2f} at the end"
    row = benchrows.make_row(id, command_line(argv), numbers, machine=machine(), note="; ".join(filter(None, [note, load])))
    taken = {r["id"] for r in benchrows.read_rows(path)}
    base, n = row["id"], 1
    while row["id"] in taken:
        n += 1
        row["id"] = f"{base}-{row['date']}" if n == 2 else f"{base}-{row['date']}-{n - 1}"
    benchrows.append_row(path, row)
    print(f"row {row['id']} -> {path}")
    if render and Path(path).resolve().parent == ROWS_DIR.resolve():
        benchrows.main([])
        if not any(f"| {row['id']} |" in p.read_text() for p in benchrows.PAGES):
            print(f"  (no page shows it yet: add a `<!-- rows {path.stem}: ... -->` marker to docs/benchmarks.md)")
    return row


def photos(source: str | os.PathLike, n: int | None = None) -> list[Path]:
    """The photos of a folder, sorted (the first ``n``)."""
    files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"error: no photos in {source}")
    return files[:n] if n else files


def table(numbers: dict) -> str:
    """``numbers`` as two aligned columns, for the terminal."""
    w = max(map(len, numbers), default=0)
    return "\n".join(f"  {k:<{w}}  {benchrows.fmt(v)}" for k, v in numbers.items())
