"""The benchmark harness (``scripts/benchlib.py``) and the one entry point (``scripts/bench.py``) measure what they say.

Nothing here times the project: the children are tiny ``python -c`` processes whose behaviour is known
(the order they ran in, the memory they touched, the output they printed), so each test has an oracle:
the alternation order, the median and per-round ratio arithmetic, the peak RSS of a child that allocates
a known amount, the refusal of outputs that differ, the row ``--record`` writes (``benchrows.check_row``),
every target's arguments, and every committed row's command still running under today's scripts.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
H = importlib.import_module("benchlib")
bench = importlib.import_module("bench")
benchrows = importlib.import_module("benchrows")
PY = sys.executable


# ------------------------------------------------------------------------------------------- the arithmetic


def test_schedule_alternates_variants_round_by_round():
    assert H.schedule(["a", "b"], 3) == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert [n for _, n in H.schedule(["a", "b", "c"], 3, rotate=True)] == list("abcbcacab")
    assert H.schedule(["a"], 0) == []


def test_medians_and_per_round_ratios():
    assert H.stats([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    # per-round ratios, not a ratio of medians: (2/1, 6/2, 4/4) -> median 2.0; medians 4/2 would give 2.0 too,
    # so a case where they differ: (1/1, 10/2, 3/3) -> ratios 1, 5, 1 -> 1.0; ratio of medians 3/2 = 1.5
    assert H.ratio([1.0, 10.0, 3.0], [1.0, 2.0, 3.0]) == {"median": 1.0, "min": 1.0, "max": 5.0}
    with pytest.raises(ValueError):
        H.ratio([1.0, 2.0], [1.0])


def _run(name, k, wall, rss=10.0):
    return H.Run(name, k, wall, rss, 0, "", 0.0)


def test_summarize_gives_medians_minima_peak_rss_and_ratios_to_the_base():
    runs = {"ours": [_run("ours", 0, 2.0, 100), _run("ours", 1, 4.0, 120), _run("ours", 2, 3.0, 90)],
            "stock": [_run("stock", 0, 4.0), _run("stock", 1, 6.0), _run("stock", 2, 9.0, 300)]}
    got = H.summarize(runs, base="ours")
    assert got == {"ours_s": 3.0, "ours_s_min": 2.0, "ours_rss_MB": 120, "stock_s": 6.0, "stock_s_min": 4.0,
                   "stock_rss_MB": 300, "stock_over_ours": 2.0}  # rounds: 4/2, 6/4, 9/3 -> 2, 1.5, 3


def test_interleave_calls_in_alternation_after_an_untimed_warm_up():
    calls = []
    t = H.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-up, round 1, round 2
    assert [len(t[k]["wall"]) for k in "ab"] == [2, 2] and all(v >= 0 for k in "ab" for v in t[k]["cpu"])


# ----------------------------------------------------------------------------------------- child processes


def test_measure_runs_whole_children_alternating_and_keeps_their_output(tmp_path):
    log = tmp_path / "order"
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' '); print('out', sys.argv[2])"
    variants = [H.Variant(n, [PY, "-c", code, str(log), n], read=lambda r: r.log.split()[-1]) for n in ("A", "B")]
    runs = H.measure(variants, 3, quiet=True)
    assert log.read_text().split() == ["A", "B", "A", "B", "A", "B"]
    assert [r.round for r in runs["A"]] == [0, 1, 2] and [r.output for r in runs["B"]] == ["B"] * 3
    assert all(r.wall_s > 0 and r.rc == 0 for rs in runs.values() for r in rs)


def test_a_failing_child_stops_the_benchmark_with_its_log():
    v = H.Variant("bad", [PY, "-c", "import sys; print('the reason'); sys.exit(3)"])
    with pytest.raises(SystemExit, match=r"(?s)bad failed \(exit 3\).*the reason"):
        H.measure([v], 1, quiet=True)
    ok = H.Variant("tolerated", [PY, "-c", "import sys; sys.exit(1)"], ok_rc=(0, 1))
    assert H.measure([ok], 1, quiet=True)["tolerated"][0].rc == 1


def test_peak_rss_of_a_child_is_what_it_allocated():
    """Oracle: the child writes 300 MiB of bytes (every page touched) on top of an interpreter's few MiB; a
    child below this process's own peak (which Linux counts as every child's floor) reads None, not the floor."""
    # Measured from a fresh parent: this test process's own peak (torch, models of earlier tests) would be the floor.
    code = ("import sys; sys.path.insert(0, 'scripts'); import benchlib as H; "
            "big = H.run_child([sys.executable, '-c', \"b = b'x' * (300 << 20)\"]).peak_rss_mb; "
            "small = H.run_child([sys.executable, '-c', 'pass']).peak_rss_mb; print(H.own_peak_mb(), big, small)")
    out = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    parent, big, small = float(out[0]), out[1], out[2]
    assert parent < 300 and big != "None" and 300 <= float(big) <= 340, out
    assert small == "None", out


def test_a_child_that_does_not_exit_is_killed_after_the_timeout():
    r = H.reap(H.spawn([PY, "-c", "import time; time.sleep(60)"]), timeout=0.5)
    assert r.rc < 0 and r.wall_s < 30


# ------------------------------------------------------------------------------------- identical outputs


def test_identical_outputs_pass_and_a_planted_difference_fails():
    same = {"stock": [1, 2, 3], "onnx": [1, 2, 3], "ours": [1, 2, 3]}
    H.check_same(same)
    with pytest.raises(H.OutputsDiffer, match="ours differs from stock"):
        H.check_same({**same, "ours": [1, 2, 4]})
    with pytest.raises(H.OutputsDiffer, match="^output of stock, onnx differs from ours"):
        H.check_same({**same, "ours": [0]}, reference="ours")


def test_detections_agree_within_tolerance_and_a_moved_box_is_caught():
    box = {"class_id": 0, "class_name": "dent", "score": 0.91, "box_xyxy": [10.0, 10.0, 110.0, 90.0]}
    stock = [{"image": "b.jpg", "detections": [box]}, {"image": "a.jpg", "detections": []}]
    onnx = [{"image": "a.jpg", "detections": []},
            {"image": "b.jpg", "detections": [{**box, "score": 0.91 + 2e-6}]}]  # another order, float noise
    bench.same_detections(stock, onnx) or pytest.fail("float noise must agree")
    moved = [{"image": "a.jpg", "detections": []}, {"image": "b.jpg", "detections": [{**box, "box_xyxy": [14.0, 10.0, 114.0, 90.0]}]}]
    assert not bench.same_detections(stock, moved)
    with pytest.raises(H.OutputsDiffer, match="ours"):
        H.check_same({"stock": stock, "onnx": onnx, "ours": moved}, bench.same_detections)


# ------------------------------------------------------------------------------------------------- rows


def test_record_writes_a_whole_row_with_the_command_machine_and_date(tmp_path, monkeypatch):
    monkeypatch.setitem(H.START_ENV, "OMP_NUM_THREADS", "1")
    argv = ["predict", "--n", "3", "--record", "x.jsonl", "--conf", "0.9"]
    row = H.record("engine", "predict-routes", argv, {"ours_s": 1.5, "stock_over_ours": 1.2}, note="n",
                   rows_dir=tmp_path, render=False)
    assert benchrows.check_row(row) == []
    assert row["command"] == "OMP_NUM_THREADS=1 .venv/bin/python scripts/bench.py predict --n 3 --conf 0.9"
    assert re.match(r"\d+-core .*; Python 3\.\d+.*torch \d", row["machine"]), row["machine"]
    assert row["note"].startswith("n; load average")
    again = H.record("engine", "predict-routes", argv, {"ours_s": 1.4}, rows_dir=tmp_path, render=False)
    third = H.record("engine", "predict-routes", argv, {"ours_s": 1.3}, rows_dir=tmp_path, render=False)
    assert [r["id"] for r in benchrows.read_rows(tmp_path / "engine.jsonl")] == [
        "predict-routes", f"predict-routes-{row['date']}", f"predict-routes-{row['date']}-2"]
    assert again["numbers"] == {"ours_s": 1.4} and third["date"] == row["date"]


def test_main_records_each_row_a_target_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "check", lambda args, argv: [("check", "check", {"images": 4, "check_s": 2.0}, "a note")])
    rows = tmp_path / "check.jsonl"
    assert bench.main(["check", "d.yaml", "--rounds", "1", "--record", str(rows), "--id", "check-x"]) == 0
    (row,) = benchrows.read_rows(rows)
    assert row["id"] == "check-x" and row["numbers"] == {"images": 4, "check_s": 2.0}
    assert row["command"].endswith("scripts/bench.py check d.yaml --rounds 1 --id check-x") and "a note" in row["note"]


def test_cardd_rows_numbers_come_from_row_json():
    r = {"memory_format": "channels_last", "budget_minutes": 30.0, "train_minutes": 31.04, "epochs": 18, "steps": 3049,
         "mAP50": 0.46104, "mAP50-95": 0.33012, "per_class": {"crack": 0.0213, "dent": 0.2311}}
    assert bench.cardd_numbers(r) == {"memory": "NHWC", "budget_min": 30.0, "train_min": 31.0, "epochs": 18, "steps": 3049,
                                      "mAP50": 0.461, "mAP50-95": 0.33, "per_class_mAP50": {"crack": 0.02, "dent": 0.23}}


def test_cardd_set_reaches_every_row_after_the_rows_own_change():
    """``--set`` repeats an older recipe exactly: it follows each row's own change, so train_cardd's own parser
    (the consumer, the oracle here) ends with both, the bench's last."""
    train_cardd = importlib.import_module("train_cardd")
    for name, own in (("r-b32", {"nbs": 32}), ("r-warmup05", {}), ("recipe", {})):
        cmd = bench.row_command(name, 30, Path("/tmp/x"), "d.yaml", None, False, ["warmup_epochs=0.5", "cls_pw=0.5"])
        args = train_cardd.parse_args(cmd[1:])
        assert args.batch == (32 if name == "r-b32" else None)
        assert train_cardd.parse_sets(args.set) == {**own, "warmup_epochs": 0.5, "cls_pw": 0.5}
    cmd = bench.row_command("r-warmup05", 30, Path("/tmp/x"), "d.yaml", None, False, ["warmup_epochs=2"])
    assert train_cardd.parse_sets(train_cardd.parse_args(cmd[1:]).set) == {"warmup_epochs": 2}
    with pytest.raises(SystemExit, match="synth-weights"):
        bench.row_command("r-synth", 30, Path("/tmp/x"), "d.yaml", None, False)


# ------------------------------------------------------------------------------------------- the targets

TARGETS = {
    "predict": (["predict", "--n", "3", "--variants", "stock", "onnx", "ours", "--conf", "0.9"],
                dict(n=3, variants=["stock", "onnx", "ours"], conf=0.9, rounds=3, record=None)),
    "predict-in-process": (["predict", "--in-process", "--backend", "torch", "--gpu-decode", "--redraw-head", "0"],
                           dict(in_process=True, backend="torch", gpu_decode=True, redraw_head=0)),
    "inspect": (["inspect", "p.jpg", "--repeats", "21", "--record"], dict(photo="p.jpg", repeats=21, record="")),
    "report": (["report", "--rounds", "5", "--old", "3e16b48", "--no-layercam"], dict(rounds=5, old="3e16b48", no_layercam=True)),
    "explore": (["explore", "--neurons", "10", "--weights", "w.pt"], dict(neurons=10, weights="w.pt", imgsz=640)),
    "atlas": (["atlas", "--source", "d.yaml", "--n", "799", "--small", "200", "--layers", "0", "model.2.cv2", "--record"],
              dict(source="d.yaml", n=799, small=200, layers=["0", "model.2.cv2"], imgsz=320, conf=0.25, weights=None, record="")),
    "atlas-defaults": (["atlas"], dict(source=str(bench.SAMPLE / "data.yaml"), n=None, small=200, layers=None, rounds=3)),
    "ray": (["ray", "--workers", "1", "2", "4"], dict(workers=[1, 2, 4], conf=0.25)),
    "cardd-cpu": (["cardd-cpu", "--data", "d.yaml", "--minutes", "30", "60", "--rows", "recipe", "--set", "a=1", "--record", "f.jsonl"],
                  dict(data="d.yaml", minutes=[30.0, 60.0], rows=["recipe"], set=["a=1"], record="f.jsonl")),
    "throughput": (["cardd-cpu", "--throughput", "--shapes", "16x320", "8x256"], dict(throughput=True, shapes=[(16, 320), (8, 256)])),
    "demo": (["demo", "--minutes", "0.5", "--no-report"], dict(part="run", minutes=0.5, no_report=True)),
    "demo-synth": (["demo", "--part", "synth", "--n", "20"], dict(part="synth", n=20)),
    "check": (["check", "d.yaml", "--rounds", "2"], dict(data="d.yaml", rounds=2)),
}


@pytest.mark.parametrize("case", TARGETS, ids=str)
def test_every_target_parses_its_arguments(case):
    argv, want = TARGETS[case]
    args = bench.build_parser().parse_args(argv)
    assert args.target == argv[0] and callable(getattr(bench, argv[0].replace("-", "_")))
    assert {k: getattr(args, k) for k in want} == want


def test_a_bad_target_or_option_is_refused():
    for argv in (["nope"], ["predict", "--variants", "tensorrt"], ["demo", "--part", "all"], ["cardd-cpu", "--shapes", "big"],
                 ["atlas", "--small", "half"], []):
        with pytest.raises(SystemExit):
            bench.build_parser().parse_args(argv)


def test_the_figures_script_parses_each_figure():
    figures = importlib.import_module("figures")
    p = figures.build_parser()
    assert p.parse_args(["preprocess"]).out.endswith("docs/img/preprocess.png")
    assert p.parse_args(["scaling", "--minutes", "1", "--out", "x.png"]).out == "x.png"
    assert p.parse_args(["explore", "--weights", "w.pt"]).func is figures.explore
    a = p.parse_args(["atlas", "--weights", "w.pt", "--val", "16", "--imgsz", "128"])
    assert (a.func, a.val, a.imgsz, a.layer) == (figures.atlas, 16, 128, "model.2.cv2") and a.out.endswith("docs/img/atlas.jpg")
    for figure in ("explore", "atlas"):
        with pytest.raises(SystemExit):
            p.parse_args([figure])  # --weights is required


# ------------------------------------------------------------------------ every committed row runs again

ROWS = [r for rows in benchrows.load_tables().values() for r in rows]
SCRIPT = re.compile(r"scripts/[\w.-]+\.py")


def _runnable(command: str) -> list[str]:
    """What is wrong with ``command`` today: a script that is gone, a bench.py call its parser refuses."""
    problems = []
    for part in command.split("&&"):
        words = [w for w in shlex.split(part) if not re.match(r"^[A-Z_]+=", w)]
        if words[:1] == ["make"]:
            target = words[1] if len(words) > 1 else "all"
            if not re.search(rf"^{re.escape(target)}:", (REPO / "Makefile").read_text(), re.M):
                problems.append(f"no make target {target}")
            continue
        for i, w in enumerate(words):
            if SCRIPT.fullmatch(w):
                if not (REPO / w).is_file():
                    problems.append(f"{w} is gone")
                elif w == "scripts/bench.py":
                    try:
                        bench.build_parser().parse_args(words[i + 1:])
                    except SystemExit:
                        problems.append(f"bench.py refuses {words[i + 1:]}")
    return problems


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["id"])
def test_every_rows_command_or_its_rerun_runs_with_todays_scripts(row):
    """A row keeps the command it was measured with; when that script has since been folded into
    scripts/bench.py, its ``rerun`` is today's command for the same numbers, and the page shows it."""
    if "rerun" in row:
        assert _runnable(row["command"]), f"{row['id']}: rerun given but the command still runs as it is"
        assert _runnable(row["rerun"]) == [], row["rerun"]
    else:
        assert _runnable(row["command"]) == [], f"{row['id']}: add a `rerun` with today's command"


def test_the_runnable_check_catches_a_gone_script_and_a_refused_option():
    assert _runnable(".venv/bin/python scripts/bench_predict.py --n 40") == ["scripts/bench_predict.py is gone"]
    assert _runnable("OMP_NUM_THREADS=1 .venv/bin/python scripts/bench.py inspect --repeats 21") == []
    assert _runnable(".venv/bin/python scripts/bench.py inspect --rounds-of-golf 3")
    assert _runnable("make demo && python3 scripts/bench.py cardd-cpu --tiny") == []
    assert _runnable("make nothing-here") == ["no make target nothing-here"]


def test_a_rerun_row_shows_the_rerun_and_names_the_measured_command():
    row = {"id": "x", "command": "python3 scripts/old.py --a", "rerun": "python3 scripts/bench.py t --a", "machine": "m",
           "date": "2026-12-01", "numbers": {"v": 1}, "note": "n"}
    text = benchrows.render_table([row], ["id", "v", "command"])
    assert "| x | 1 | `python3 scripts/bench.py t --a` |" in text
    assert "- **x**: n (measured with `scripts/old.py`)" in text


def test_no_doc_config_or_module_names_a_script_that_is_gone():
    """Outside the rendered tables (whose notes name the command a row was measured with)."""
    files = [REPO / "README.md", REPO / "Makefile", REPO / "setup.py", *(REPO / "docs").glob("*.md"),
             REPO / "datasets" / "README.md", *(REPO / "configs").glob("*.yaml"), *(REPO / "pipeline").rglob("*.py"),
             *(REPO / "scripts").glob("*.py")]
    gone = {f"{f.relative_to(REPO)}: {m}" for f in files for m in re.findall(r"(?<![\w/])(?:scripts/)?([a-z_]+\.py)\b",
                                                                             benchrows.MARKER.sub("", f.read_text()))
            if (m.startswith(("bench", "train_cardd", "stage_cardd")) or m.endswith(("_figure.py", "_screenshot.py", "_experiment.py")))
            and not (REPO / "scripts" / m).is_file()}
    assert sorted(gone) == []
