"""A run's own files read back with the wrong types: watch.jsonl (``film``) and atlas.json (``explore --atlas``).

The hostile retest found a ``blocks`` list or a string ``epoch`` in watch.jsonl a traceback, and an atlas.json
whose ``channels`` is a string, or whose top entry names photo 10**9, a 500 from the explorer's API. Each file's
schema is now checked once when it is read: a bad watch record is left out with one warning line naming the
file and its line (or, with no good record left, one error line), a bad atlas is refused at start-up with one
error line, before the model is loaded or anything is served.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_film import planted

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.cli import main
from pipeline.core.io import InputError
from pipeline.explore.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def lines_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def one_error_line(err: str) -> str:
    lines = lines_of(err)
    assert len(lines) == 1, f"expected one line, got: {lines}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# watch.jsonl -> cardamage film
# ------------------------------------------------------------------------------------------------


def _bad_record(good: dict, case: str):
    """One record of ``good``'s shape, made wrong the way ``case`` says."""
    r = json.loads(json.dumps(good))
    if case == "blocks_list":
        r["blocks"] = [1, 2]
    elif case == "epoch_forged":
        r["epoch"] = "a\nerror: forged"
    elif case == "block_value_str":
        r["blocks"]["model.0"]["grad_norm"] = "big"
    elif case == "block_row_list":
        r["blocks"]["a\nerror: forged.jpg"] = [1]
    elif case == "probe_list":
        r["probe"] = [1]
    elif case == "neuron_null":
        r["probe"]["neuron"] = None
    elif case == "step_str":
        r["step"] = "4"
    elif case == "ap50_list":
        r["ap50"] = ["crack", 0.5]
    elif case == "huge_int":
        r["blocks"]["model.0"]["weight_norm"] = 10 ** 400  # float() of it overflows
    elif case == "nan":
        r["grad_first_last"] = float("nan")  # json.loads reads NaN
    elif case == "imgsz_huge":
        r["probe"]["imgsz"] = [10 ** 9, 10 ** 9]
    elif case == "not_an_object":
        r = [1, 2, 3]
    return r


BAD_RECORDS = ["blocks_list", "epoch_forged", "block_value_str", "block_row_list", "probe_list", "neuron_null",
               "step_str", "ap50_list", "huge_int", "nan", "imgsz_huge", "not_an_object"]


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_type_wrong_watch_record_is_left_out_with_one_warning(case, tmp_path, capsys):
    """Three good records and a bad fourth line: the film is drawn from the three, one warning names line 4."""
    watch = tmp_path / "watch.jsonl"
    good = planted(watch, 0.5, 1.0)
    with open(watch, "a") as f:
        f.write(json.dumps(_bad_record(good[-1], case)) + "\n")
    out = tmp_path / "film.html"
    assert main(["film", str(tmp_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in lines_of(err) if line.startswith("warning: ")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"warning: {watch}: line 4: "), warnings[0]
    assert warnings[0].endswith("record left out"), warnings[0]
    assert not any(line.startswith("error:") for line in lines_of(err)), err  # nothing forged a line
    assert "3 records" in out.read_text()  # the page's header counts the records it drew


@pytest.mark.parametrize("case", ["blocks_list", "epoch_forged", "block_row_list"])
def test_a_watch_file_with_no_good_record_is_one_error_line(case, tmp_path, capsys):
    watch = tmp_path / "watch.jsonl"
    good = planted(tmp_path / "good.jsonl", 0.5, 1.0, n=2)
    watch.write_text("".join(json.dumps(_bad_record(r, case)) + "\n" for r in good))
    assert main(["film", str(tmp_path), "--out", str(tmp_path / "film.html")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {watch}: holds no record the film can draw: line 1: ")
    assert line.endswith("(2 records left out in all: lines 1, 2)"), line
    assert not (tmp_path / "film.html").exists()


def test_a_forged_epoch_in_a_child_process_prints_no_traceback(tmp_path):
    """The retest's own case through the console entry: exit 1, one escaped line, no traceback on stderr."""
    watch = tmp_path / "watch.jsonl"
    good = planted(tmp_path / "good.jsonl", 0.5, 1.0, n=1)
    watch.write_text(json.dumps(_bad_record(good[0], "epoch_forged")) + "\n")
    p = subprocess.run([sys.executable, "-m", "pipeline", "film", str(tmp_path), "--out", str(tmp_path / "f.html")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert one_error_line(p.stderr) == (f"error: {watch}: holds no record the film can draw: line 1: "
                                        "'epoch' is a str, not a whole number")


def test_compare_leaves_out_a_bad_variant_record_too(tmp_path, capsys):
    from pipeline.report.film import write_compare

    for name in ("silu", "relu"):
        (tmp_path / name).mkdir()
    planted(tmp_path / "silu" / "watch.jsonl", 0.5, 1.0)
    bad = planted(tmp_path / "relu" / "watch.jsonl", 0.5, 1.0)
    with open(tmp_path / "relu" / "watch.jsonl", "a") as f:
        f.write(json.dumps(_bad_record(bad[-1], "blocks_list")) + "\n")
    with pytest.warns(UserWarning, match=r"relu/watch.jsonl: line 4: 'blocks' is a list"):
        page = write_compare(tmp_path)
    assert page.is_file()


# ------------------------------------------------------------------------------------------------
# atlas.json -> cardamage explore --atlas
# ------------------------------------------------------------------------------------------------


def good_atlas() -> dict:
    """A small atlas.json by hand: two photos, one layer of two channels (docs/atlas.md)."""
    def channel(c):
        return {"channel": c, "top": [{"photo": 1, "y": 2, "x": 3, "value": 0.75, "z": 0.5,
                                       "box_xyxy": [0, 0, 10, 10], "box_input": [0, 0, 8, 8]}],
                "classes": {"dent": {"inside_mean": 0.1, "iou": 0.05}}, "outside_mean": None, "best_class": "dent",
                "best_iou": 0.05, "threshold": 0.3, "active_fraction": 0.25, "activity": "active", "mean": 0.1,
                "filter": [[[0.1, 0.2], [0.3, 0.4]]], "crops": f"crops/model.0/c{c}.jpg"}

    return {"weights": "best.pt", "imgsz": 64, "k": 1, "photos": ["/data/a.jpg", "/data/b.jpg"], "selectivity": True,
            "layers": {"model.0": {"depth": 0, "index": 0, "channels_count": 2, "never_active": 0,
                                   "rarely_active": 0, "mean_best_iou": 0.05, "channels": [channel(0), channel(1)]}}}


def _hostile(case: str) -> dict:
    doc = good_atlas()
    ch = doc["layers"]["model.0"]["channels"][0]
    if case == "channels_str":
        doc["layers"]["model.0"]["channels"] = "oops"
    elif case == "photo_huge":
        ch["top"][0]["photo"] = 10 ** 9
    elif case == "photo_negative":
        ch["top"][0]["photo"] = -1
    elif case == "photo_str":
        ch["top"][0]["photo"] = "0"
    elif case == "y_float":
        ch["top"][0]["y"] = 1.5
    elif case == "value_nan":
        ch["top"][0]["value"] = float("nan")
    elif case == "value_str":
        ch["top"][0]["value"] = "a\nerror: forged"
    elif case == "top_dict":
        ch["top"] = {"photo": 0}
    elif case == "channel_list":
        doc["layers"]["model.0"]["channels"][1] = [1]
    elif case == "photos_str":
        doc["photos"] = "a.jpg"
    elif case == "photo_name_int":
        doc["photos"][1] = 7
    elif case == "layer_list":
        doc["layers"]["a\nerror: forged"] = []
    elif case == "best_iou_str":
        ch["best_iou"] = "high"
    elif case == "activity_int":
        ch["activity"] = 3
    elif case == "crops_outside":
        ch["crops"] = "../../../etc/passwd"
    elif case == "crops_absolute":
        ch["crops"] = "/etc/passwd"
    elif case == "classes_list":
        ch["classes"] = ["dent"]
    elif case == "selectivity_str":
        doc["selectivity"] = "yes"
    return doc


HOSTILE_ATLASES = ["channels_str", "photo_huge", "photo_negative", "photo_str", "y_float", "value_nan", "value_str",
                   "top_dict", "channel_list", "photos_str", "photo_name_int", "layer_list", "best_iou_str",
                   "activity_int", "crops_outside", "crops_absolute", "classes_list", "selectivity_str"]


def _write_atlas(folder: Path, doc) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "atlas.json").write_text(json.dumps(doc))  # NaN is written as the NaN json.loads reads back
    return folder


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "car.jpg"
    cv2.imwrite(str(path), np.full((48, 64, 3), 128, np.uint8))
    return path


@pytest.mark.parametrize("case", HOSTILE_ATLASES)
def test_explore_refuses_a_type_wrong_atlas_at_start_up(case, photo, tmp_path, capsys, monkeypatch):
    """One line naming atlas.json and exit 1, before the model is loaded: nothing is ever served from it."""
    import pipeline.cli.explore as cli_explore

    def never(*args, **kwargs):
        raise AssertionError("the atlas was accepted: explore went on to load the model")

    monkeypatch.setattr(cli_explore, "load_model", never)
    folder = _write_atlas(tmp_path / "atlas", _hostile(case))
    assert main(["explore", "--weights", "yolov8n.yaml", "--atlas", str(folder), str(photo), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = one_error_line(err)
    assert line.startswith(f"error: {folder / 'atlas.json'}: not a readable atlas: "), line


def test_the_retests_two_atlases_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError) as e:
        AtlasIndex(_write_atlas(tmp_path / "a", _hostile("channels_str")))
    assert e.value.reason == "not a readable atlas: layers['model.0']['channels'] is a str, not a list"
    with pytest.raises(InputError) as e:
        AtlasIndex(_write_atlas(tmp_path / "b", _hostile("photo_huge")))
    assert e.value.reason == ("not a readable atlas: layers['model.0']['channels'][0]['top'][0]['photo'] is "
                              "1000000000, not an index into 'photos' (0 to 1)")


def test_a_forged_atlas_value_cannot_forge_a_line_in_a_child_process(photo, tmp_path):
    """Through the console entry: exit 1, one line, no traceback; the model is never loaded (no such file)."""
    folder = _write_atlas(tmp_path / "atlas", _hostile("layer_list"))
    p = subprocess.run([sys.executable, "-m", "pipeline", "explore", "--weights", str(tmp_path / "missing.pt"),
                        "--atlas", str(folder), str(photo), "--no-browser"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    line = one_error_line(p.stderr)
    assert line == (f"error: {folder / 'atlas.json'}: not a readable atlas: layers['a\\nerror: forged'] is a list, "
                    "not a mapping"), line


class NoExplorer:
    """Stands in for the explorer (no model loaded): the atlas channel route never asks it."""

    def __getattr__(self, name):
        def never(*args, **kwargs):
            raise AssertionError(f"the atlas route asked the explorer for {name}")

        return never


def test_a_good_atlas_is_served_and_bad_requests_are_4xx(tmp_path):
    """The schema check accepts what docs/atlas.md describes; a request for a channel it lacks is a 400, never a 500."""
    from starlette.testclient import TestClient

    doc = good_atlas()
    atlas = AtlasIndex(_write_atlas(tmp_path / "atlas", doc))
    client = TestClient(create_app(NoExplorer(), None, atlas))
    r = client.get("/api/atlas/channel", params={"layer": "model.0", "channel": "1"})
    assert r.status_code == 200
    body = r.json()
    assert body["atlas"] is True and body["photo_names"] == ["b.jpg"] and body["top"][0]["value"] == 0.75
    for params in ({"layer": "model.0", "channel": "2"}, {"layer": "model.0", "channel": str(10 ** 30)},
                   {"layer": "model.0", "channel": "-1"}, {"layer": "model.9", "channel": "0"},
                   {"layer": "model.0", "channel": "x"}, {"layer": "model.0"}):
        r = client.get("/api/atlas/channel", params=params)
        assert 400 <= r.status_code < 500, (params, r.status_code, r.text)
    # the nulls the schema allows are accepted
    doc["layers"]["model.0"]["channels"][0].update(best_iou=None, best_class=None, crops=None, outside_mean=None)
    assert AtlasIndex(_write_atlas(tmp_path / "atlas2", doc)).entry("model.0", 0)["best_iou"] is None
