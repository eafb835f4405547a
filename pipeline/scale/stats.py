"""``cardamage inspect --stats-only --ray``: per-channel statistics per worker, merged exactly into one stats.csv.

Each ``StatsWorker`` actor takes the model from Ray's object store once and runs
``pipeline.probe.statistics.record_statistics`` (one stats-mode recorder, as one process runs it) over the
chunks of photos it is sent, returning per block the float64 totals of ``ChannelStats.state()``: count,
mean, M2, min, max and the negative and dead counts. The driver folds them in input order with
``ChannelStats.absorb`` (Chan's parallel formula in float64), so stats.csv equals the single-process file
(relative differences ~1e-15, far inside its 9 printed digits), and writes index.json as one process would.

Examples:
    cardamage inspect photos/ --weights best.pt --out runs/i --stats-only --ray --workers 2

    >>> result = ray_inspect(load_model("best.pt"), ["photos/"], "runs/i", workers=2)
    >>> result["images"], result["stats"]
    (100, PosixPath('runs/i/stats.csv'))
"""

from __future__ import annotations

import time

import torch

from pipeline.core.files import is_present
from pipeline.core.io import InputError, expand_sources, output_folder
from pipeline.model.load import detection_model, trained_imgsz
from pipeline.probe.channel_stats import DEAD_EPS, ChannelStats
from pipeline.probe.recorder import LayerRecorder
from pipeline.probe.statistics import record_statistics, write_dataset_statistics
from pipeline.scale.cluster import LOCAL, chunks, default_workers, ray_session, run_pool


class StatsWorker:
    """One Ray worker's state: the model (from the object store, once) and the recording settings.

    Examples:
        >>> w = StatsWorker(net, {"imgsz": 640, "layers": None, "dead_eps": 1e-3, "threads": 2})
        >>> part = w.stats([(0, "/data/a.jpg"), (1, "/data/b.jpg")])
        >>> part["stats"]["model.0"]["count"]
        204800
    """

    def __init__(self, net, settings: dict):
        self.net, self.settings = net, settings
        # float32 convolutions round differently with another thread count (measured: up to 7e-4 relative on
        # near-zero statistics, 2 threads vs 1): the driver's count makes each chunk what one process computes
        torch.set_num_threads(settings["threads"])

    def stats(self, chunk: list[tuple[int, str]]) -> dict:
        """Statistics of ``[(index, path)]``: ``{"stats": {block: state}, "used", "errors", "shapes"}`` by index."""
        index = {path: i for i, path in chunk}
        errors: list[InputError] = []
        s = self.settings
        try:
            rec, used, _, shapes = record_statistics(self.net, [p for _, p in chunk], s["imgsz"], layers=s["layers"],
                                                     dead_eps=s["dead_eps"], progress=False, on_error=errors.append)
        except InputError:  # not one photo of this chunk could be read: only its errors come back
            rec, used, shapes = None, [], {}
        return {
            "stats": {} if rec is None else {p: rec.stats[p].state() for p in rec.layers},
            "used": [(index[u["image"]], u["input_shape"]) for u in used],
            "errors": [(index.get(e.path, -1), e.reason) for e in errors],
            "shapes": {p: sorted(v) for p, v in shapes.items()},
        }


def ray_inspect(yolo, sources, out, layers=None, imgsz: int | None = None, fuse: bool = False, dead_eps: float = DEAD_EPS,
                address: str = LOCAL, workers: int | None = None, gpus_per_worker: float = 0, on_error=None,
                overwrite: bool = False) -> dict:
    """``inspect_dataset`` on Ray workers: the same stats.csv and index.json, from merged per-worker totals.

    Args:
        yolo: the loaded model; workers get a copy through Ray. sources: folders, globs, files, ``.txt`` lists.
        out: output folder. layers, imgsz, fuse, dead_eps: as for ``inspect_dataset``.
        address, workers, gpus_per_worker: as for ``pipeline.scale.predict.ray_predict``.
        on_error: called with each ``InputError`` (bad photos, in input order, once all are back).

    Returns:
        ``{"stats": Path, "index": Path, "images": n used, "errors": [InputError], "seconds": float}``.

    Raises:
        InputError: unknown layer selector, or no photo could be read.

    Examples:
        >>> ray_inspect(load_model("best.pt"), ["photos/"], "runs/i", workers=2)["images"]
        100
    """
    imgsz = trained_imgsz(yolo, imgsz)
    files, errors = expand_sources(sources)
    inputs = [*(s for s in map(str, sources) if is_present(s)), *files]
    with output_folder(out, inputs=inputs, overwrite=overwrite) as out:
        net = detection_model(yolo)
        if fuse:
            net.fuse(verbose=False)
        try:
            LayerRecorder(net, layers=layers, mode="stats", head=False)  # a bad selector: one line, before any worker
        except ValueError as e:
            raise InputError("--layers", str(e)) from None
        t0 = time.perf_counter()
        todo = [(i, str(f.resolve())) for i, f in enumerate(files)]
        parts: dict[int, dict] = {}
        if todo:
            with ray_session(address) as ray:
                n = min(workers or default_workers(ray, gpus_per_worker), len(todo))
                tasks = chunks(todo, n)
                settings = {"imgsz": imgsz, "layers": layers, "dead_eps": dead_eps, "threads": torch.get_num_threads()}
                actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(StatsWorker)
                net_ref = ray.put(net)
                actors = [actor.remote(net_ref, settings) for _ in range(n)]
                try:
                    run_pool(ray, actors, "stats", tasks, lambda i, part: parts.__setitem__(i, part))
                finally:
                    for a in actors:
                        ray.kill(a)
        seconds = time.perf_counter() - t0
        stats: dict[str, ChannelStats] = {}
        used, shapes, failed = [], {}, []
        for i in sorted(parts):  # input order: the merge, and every list, come out the same on any number of workers
            part = parts[i]
            for path, state in part["stats"].items():
                stats.setdefault(path, ChannelStats(len(state["mean"]), dead_eps=dead_eps)).absorb(state)
            used += [{"image": str(files[k]), "input_shape": shape} for k, shape in part["used"]]
            for path, found in part["shapes"].items():
                shapes.setdefault(path, set()).update(tuple(s) for s in found)
            failed += [InputError(files[k] if k >= 0 else "?", reason) for k, reason in part["errors"]]
        errors += failed
        for e in errors:
            if on_error:
                on_error(e)
        if not used:
            raise InputError(" ".join(map(str, sources)), f"no photo could be read ({len(errors)} errors)")
        return write_dataset_statistics(yolo, out, stats, used, errors, shapes, seconds, imgsz=imgsz, dead_eps=dead_eps)
