"""Issue 15: ``predict --ray`` and ``inspect --stats-only --ray`` give what one process gives.

One real local Ray instance (2 CPUs, started by ``ray_session``: no dashboard, usage reporting off, loopback
only) serves the module; the commands find it already running and join it. The model is a seeded checkpoint
(``tests/checkpoints.py``) whose class biases let boxes through; photos are a few real CarDD samples copied to a
temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint

from pipeline.cli import main
from pipeline.core.io import WRITTEN_LIST, expand_sources
from pipeline.probe.channel_stats import ChannelStats
from pipeline.probe.statistics import inspect_dataset
from pipeline.scale.cluster import LOCAL, LOCAL_ONLY_ENV, _skip_api_server, chunks, import_ray, ray_session
from pipeline.scale.stats import ray_inspect

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the whole module (what ``--ray`` without an address joins when one runs),
    started as ``--ray`` starts one; Ray is already imported here, as in a notebook."""
    import_ray()  # which sets RAY_USAGE_STATS_ENABLED=0 for every session, when unset
    before = {k: os.environ.get(k) for k in LOCAL_ONLY_ENV}, ray._private.ray_constants.ENABLE_RAY_CLUSTER
    with ray_session(LOCAL, num_cpus=2) as started:
        yield started, before


def test_a_local_instance_is_loopback_only_and_leaves_the_process_as_it_was(ray_local):
    """The node address is 127.0.0.1; what ``local_only`` changed for the start is put back once it has started."""
    started, (env, cluster) = ray_local
    assert started.util.get_node_ip_address() == "127.0.0.1"
    assert started._private.ray_constants.ENABLE_RAY_CLUSTER is cluster  # True on Linux, read at import
    assert started._private.node.Node.start_api_server is not _skip_api_server
    assert {k: os.environ.get(k) for k in LOCAL_ONLY_ENV} == env


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", imgsz=160)


@pytest.fixture(scope="module")
def photos(sample_images, tmp_path_factory) -> Path:
    """Six real photos and two bad ones (a truncated JPEG, text named .jpg), in a temporary folder."""
    folder = tmp_path_factory.mktemp("photos")
    for p in sample_images[:6]:
        shutil.copy(p, folder / p.name)
    data = sample_images[6].read_bytes()
    (folder / "zz_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "zz_text.jpg").write_text("not a photo\n")
    return folder


PREDICT = ["--conf", "0.25", "--imgsz", "160"]


@pytest.fixture(scope="module")
def plain(photos, weights, tmp_path_factory) -> tuple[Path, int, list[str]]:
    """The single-process run: its output folder, exit code and error lines."""
    out = tmp_path_factory.mktemp("plain") / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", str(photos), "--weights", str(weights), "--out", str(out), *PREDICT])
    return out, rc, _errors(err.getvalue())


def _errors(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("error: "))


@pytest.mark.slow
def test_ray_predict_equals_one_process(ray_local, plain, photos, weights, tmp_path, capsys):
    plain_out, plain_rc, plain_errors = plain
    out = tmp_path / "ray"
    rc = main(["predict", str(photos), "--weights", str(weights), "--out", str(out), *PREDICT, "--ray", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == plain_rc == 1  # the two bad photos
    expected = json.loads((plain_out / "detections.json").read_text())
    got = json.loads((out / "detections.json").read_text())
    assert got == expected  # same records, same order, same overlay names
    assert len(got) == 6 and sum(len(r["detections"]) for r in got) > 0
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(r["overlay"] for r in got)
    # one line per bad photo, as one process prints them
    assert _errors(err) == plain_errors and len(plain_errors) == 2
    assert all("zz_t" in line for line in plain_errors)
    shard_records = [json.loads(line) for p in sorted((out / "shards").glob("part-*.jsonl"))
                     for line in p.read_text().splitlines()]
    assert sorted(r["image"] for r in shard_records) == sorted(r["image"] for r in expected)


@pytest.mark.slow
def test_a_stopped_run_resumes_without_redoing_done_photos(ray_local, plain, photos, weights, tmp_path, capsys):
    """Three photos already in a shard (as a killed run leaves them): only the other three run again."""
    expected = json.loads((plain[0] / "detections.json").read_text())
    out = tmp_path / "ray"
    (out / "shards").mkdir(parents=True)
    done = [dict(r) for r in expected[:3]]
    for r in done:
        r["marker"] = "from the earlier run"  # a recomputed record would not carry this
    (out / "shards" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done))
    for r in expected[:3]:
        shutil.copy(plain[0] / r["overlay"], out / r["overlay"])
    # the killed run's workers had noted their overlays in the folder's list (its lines name the same bytes)
    shutil.copy(plain[0] / WRITTEN_LIST, out / WRITTEN_LIST)
    capsys.readouterr()
    rc = main(["predict", str(photos), "--weights", str(weights), "--out", str(out), *PREDICT, "--ray"])
    err = capsys.readouterr().err
    assert rc == 1 and len(_errors(err)) == 2  # bad photos are tried again, and reported again
    assert "8 photos, 3 done in earlier shards, 5 to run" in err
    got = json.loads((out / "detections.json").read_text())
    assert [r.pop("marker", None) for r in got] == ["from the earlier run"] * 3 + [None] * 3
    assert got == expected
    parts = sorted(p.name for p in (out / "shards").glob("part-*.jsonl"))
    assert parts[0] == "part-00000.jsonl" and len(parts) >= 2  # new shards beside the old, none overwritten
    # the overlays the workers drew are in the folder's list: a later run may replace them (and nothing else)
    listed = {json.loads(line)[0] for line in (out / WRITTEN_LIST).read_text().splitlines()}
    assert {r["overlay"] for r in got[3:]} <= listed

    # the same folder with other settings is refused, not mixed in
    rc = main(["predict", str(photos), "--weights", str(weights), "--out", str(out), "--conf", "0.5", "--imgsz", "160",
               "--ray"])
    assert rc == 1 and "other settings" in capsys.readouterr().err


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_merged_statistics_equal_one_process(ray_local, photos, weights, tmp_path):
    # at 320 px the convolutions take torch's multi-threaded paths, whose rounding depends on the thread count
    single = inspect_dataset(str(weights), [photos], tmp_path / "one", imgsz=320, progress=False)
    from pipeline.model.load import load_model

    merged = ray_inspect(load_model(weights), [photos], tmp_path / "ray", imgsz=320, workers=2)
    assert merged["images"] == single["images"] == 6
    assert [str(e) for e in merged["errors"]] == [str(e) for e in single["errors"]] and len(single["errors"]) == 2
    a, b = _rows(single["stats"]), _rows(merged["stats"])
    assert a[0] == b[0] and len(a) == len(b) > 100
    worst = 0.0
    for ra, rb in zip(a[1:], b[1:]):
        assert ra[:3] == rb[:3]  # layer, channel, count
        for x, y in zip(map(float, ra[3:]), map(float, rb[3:])):
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-12))
    assert worst <= 1e-6
    ia, ib = (json.loads(r["index"].read_text()) for r in (single, merged))
    assert ia["images"] == ib["images"] and ia["errors"] == ib["errors"]
    assert [(x["path"], x["output_shapes"]) for x in ia["layers"]] == [(x["path"], x["output_shapes"]) for x in ib["layers"]]


@pytest.mark.slow
def test_inspect_ray_command(ray_local, photos, weights, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["inspect", str(photos), "--weights", str(weights), "--out", str(out), "--stats-only", "--imgsz", "160",
               "--layers", "0", "1", "--ray", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and len(_errors(err)) == 2 and (out / "stats.csv").is_file()
    assert {row[0] for row in _rows(out / "stats.csv")[1:]} == {"model.0", "model.1"}


def test_local_only_sets_and_puts_back_even_when_the_start_fails(monkeypatch):
    """On a stand-in for Ray's private modules: changed inside, restored after, also after an exception."""
    from types import SimpleNamespace

    from pipeline.core.errors import InputError
    from pipeline.scale.cluster import local_only

    class Node:
        def start_api_server(self, **_):
            return "started"

    fake = SimpleNamespace(__version__="2.60.0", _private=SimpleNamespace(
        ray_constants=SimpleNamespace(ENABLE_RAY_CLUSTER=True), node=SimpleNamespace(Node=Node)))
    original = Node.start_api_server
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    with pytest.raises(RuntimeError, match="init failed"):
        with local_only(fake):
            assert fake._private.ray_constants.ENABLE_RAY_CLUSTER is False
            assert Node().start_api_server(include_dashboard=False, raise_on_failure=False) is None
            assert {k: os.environ[k] for k in LOCAL_ONLY_ENV} == LOCAL_ONLY_ENV
            raise RuntimeError("init failed")
    assert fake._private.ray_constants.ENABLE_RAY_CLUSTER is True and Node.start_api_server is original
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1" and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    # a Ray whose private layout moved: refused in one line, not started on every interface
    with pytest.raises(InputError, match="cannot be held to loopback"):
        with local_only(SimpleNamespace(__version__="9.0.0", _private=SimpleNamespace())):
            pytest.fail("entered")


def test_absorb_equals_one_pass():
    """Chan's merge of per-worker totals against one ChannelStats over every batch (no Ray needed)."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(1, 8, 5 + i, 7, generator=g) * (i + 1) + 3.0 for i in range(6)]
    one, parts = ChannelStats(8, kernel=False), [ChannelStats(8, kernel=False) for _ in range(3)]
    for i, z in enumerate(batches):
        one.update(z, torch.nn.functional.silu(z))
        parts[i % 3].update(z, torch.nn.functional.silu(z))
    total = ChannelStats(8)
    for p in [ChannelStats(8), *parts]:  # an empty worker adds nothing
        total.absorb(p.state())
    for key in ("mean", "std", "min", "max", "frac_negative", "frac_dead", "post_mean"):
        torch.testing.assert_close(getattr(total, key), getattr(one, key), rtol=1e-12, atol=0)
    assert total.count == one.count


def test_txt_lists_and_chunks(tmp_path, sample_images):
    listed = tmp_path / "list.txt"
    listed.write_text(f"# two photos\n{sample_images[1]}\n\nmissing.jpg\n")
    files, errors = expand_sources([str(sample_images[0]), str(listed)])
    assert files == [sample_images[0], sample_images[1]]
    assert [e.reason for e in errors] == ["file not found"] and errors[0].path == str(tmp_path / "missing.jpg")
    assert chunks(list(range(10)), workers=2) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert sum(chunks(list(range(100)), workers=2), []) == list(range(100))


def test_a_text_file_that_is_not_a_list_is_one_line(tmp_path, sample_images, weights, capsys):
    """Notes saved as .txt are not a photo list: one error naming the file, not one per line; the rest runs."""
    notes = tmp_path / "notes.txt"
    prose = ["# Notes", "See https://github.com/example/repo for the data.", "", "Three runs, ray://host:1 too."]
    notes.write_text("\n".join(prose * 40) + "\n")
    out = tmp_path / "o"
    assert main(["predict", str(notes), str(sample_images[0]), "--weights", str(weights), "--out", str(out),
                 "--imgsz", "160", "--no-overlays"]) == 1  # a bad input is a non-zero exit
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    # 2 lines of text in each of the 40 copies ('#' lines and blank ones are not entries of a list)
    assert err == [f"error: {notes}: not a photo list: none of its 80 lines names a photo"]
    records = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in records] == [str(sample_images[0])]  # the good photo still ran


def test_plain_predict_reads_a_txt_list_too(tmp_path, sample_images, weights):
    """A .txt list is a SOURCE for every predict, not only with --ray: its photos, in its order."""
    listed = tmp_path / "list.txt"
    listed.write_text(f"{sample_images[3]}\n{sample_images[2]}\n")
    out = tmp_path / "o"
    assert main(["predict", str(listed), "--weights", str(weights), "--out", str(out), "--imgsz", "160",
                 "--no-overlays"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert [r["image"] for r in records] == [str(sample_images[3]), str(sample_images[2])]


def test_ray_flags_are_checked(tmp_path, capsys):
    assert main(["predict", "x.jpg", "--weights", "w.pt", "--out", str(tmp_path / "o"), "--gpus-per-worker", "1"]) == 1
    assert "add --ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--ray", "photos/", "--weights", "w.pt", "--out", str(tmp_path / "o")])
    assert "put --ray after the photos" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_process_resumes(photos, weights, tmp_path):
    """Kill ``predict --ray`` once its first shard is written; the second run does only the rest."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "predict", str(photos), "--weights", str(weights), "--out", str(out),
           *PREDICT, "--ray", "--workers", "1", "--no-overlays"]
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list((out / "shards").glob("part-*.jsonl")) and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray processes it started (its session)
    first.wait()
    done = sum(len(p.read_text().splitlines()) for p in (out / "shards").glob("part-*.jsonl"))
    assert 0 < done
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr
    assert f"8 photos, {done} done in earlier shards, {8 - done} to run" in second.stderr
    assert len(json.loads((out / "detections.json").read_text())) == 6


def test_train_passes_several_gpus_to_ultralytics_ddp(synth_data, tmp_path, monkeypatch):
    """Many GPUs for training stay Ultralytics' DDP: ``--device 0,1`` reaches ``YOLO.train`` unchanged."""
    from ultralytics.engine.model import Model

    seen = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what --device checks; no GPU is touched
    monkeypatch.setattr(Model, "train", lambda self, **kw: seen.update(kw))
    assert main(["train", "--data", str(synth_data), "--out", str(tmp_path / "run"), "--device", "0,1", "--epochs", "1"]) == 0
    assert seen["device"] == "0,1" and seen["epochs"] == 1
