"""``cardamage atlas --ray``: per-worker atlas tables, merged exactly into the atlas one process would write.

Each ``AtlasWorker`` actor takes the model from Ray's object store once and runs
``pipeline.analysis.atlas.AtlasPass`` over the chunks of photos it is sent, each photo under its index in the
whole run, returning per block the tables of ``probe.atlas_stats.ChannelAtlas.state()``. Every table is a
top-k or a sum: the driver absorbs the chunks in input order, so the top-k (ties included: the earlier photo
first) and the histograms equal the single-process ones exactly, and the float64 sums up to their rounding
(~1e-16 relative). Unreadable photos leave the run as in one process, so the photo indices are then renumbered
to count the readable photos only, as one process numbers them.

Examples:
    cardamage atlas --weights best.pt photos/ --out runs/atlas --ray --workers 2

    >>> parts = ray_parts(workers=2)
    >>> build_atlas(yolo, ["photos/"], "runs/atlas", parts=parts)       # pipeline.atlas.build
"""

from __future__ import annotations

import torch

from pipeline.analysis.atlas import AtlasPass
from pipeline.core.io import InputError
from pipeline.probe.atlas_stats import ChannelAtlas
from pipeline.scale.cluster import LOCAL, chunks, default_workers, ray_session, run_pool


class AtlasWorker:
    """One Ray worker: an ``AtlasPass`` of the model (fused once) with the run's settings.

    Examples:
        >>> w = AtlasWorker(net, {"imgsz": 320, "layers": None, "k": 9, "bins": 256, "threads": 2})
        >>> part = w.tables([(0, "/data/a.jpg"), (1, "/data/b.jpg")])
    """

    def __init__(self, net, settings: dict):
        # float32 convolutions round differently with another thread count: the driver's count makes each photo's
        # maps what one process computes
        torch.set_num_threads(settings["threads"])
        self.atlas = AtlasPass(net, imgsz=settings["imgsz"], layers=settings["layers"], k=settings["k"],
                               bins=settings["bins"])

    def tables(self, chunk: list[tuple[int, str]]) -> dict:
        """Tables of ``[(index, path)]`` alone: ``{"tables": {block: state}, "cell_stride", "used", "errors"}``."""
        self.atlas.tables, self.atlas.photos = {}, []  # each chunk merges on its own, in input order
        used, errors = [], []
        for i, path in chunk:
            try:
                used.append((i, self.atlas.add(path, index=i)))
            except InputError as e:
                errors.append((e.path, e.reason))
        return {"tables": {p: t.state() for p, t in self.atlas.tables.items()},
                "cell_stride": dict(self.atlas.cell_stride), "used": used, "errors": errors}


def ray_parts(address: str = LOCAL, workers: int | None = None, gpus_per_worker: float = 0, on_error=None):
    """The ``parts`` hook of ``pipeline.atlas.build.build_atlas`` that fills its tables on Ray workers.

    Returns:
        ``parts(atlas, files) -> (photo entries, [InputError])``: after it, ``atlas.tables`` and
        ``atlas.cell_stride`` hold the merged tables, with photo indices counting readable photos only.
    """

    def parts(atlas: AtlasPass, files) -> tuple[list[dict], list[InputError]]:
        todo = [(i, str(f)) for i, f in enumerate(files)]
        results: dict[int, dict] = {}
        with ray_session(address) as ray:
            n = max(1, min(workers or default_workers(ray, gpus_per_worker), len(todo)))
            settings = {"imgsz": atlas.imgsz, "layers": atlas.layers, "k": atlas.k, "bins": atlas.bins,
                        "threads": torch.get_num_threads()}
            actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(AtlasWorker)
            net_ref = ray.put(atlas.model)
            actors = [actor.remote(net_ref, settings) for _ in range(n)]
            try:
                run_pool(ray, actors, "tables", chunks(todo, n), lambda i, part: results.__setitem__(i, part))
            finally:
                for a in actors:
                    ray.kill(a)
        used, errors = [], []
        for i in sorted(results):  # input order: ties in the top-k resolve as in one process
            part = results[i]
            for path, state in part["tables"].items():
                if path not in atlas.tables:
                    atlas.tables[path] = ChannelAtlas(state["channels"], state["classes"], state["k"], state["bins"])
                atlas.tables[path].absorb(state)
            atlas.cell_stride.update(part["cell_stride"])
            used += part["used"]
            errors += [InputError(path, reason) for path, reason in part["errors"]]
        for e in errors:
            if on_error:
                on_error(e)
        # one process numbers readable photos only: renumber the run's indices the same way
        lut = torch.full((max(len(files), 1),), -1, dtype=torch.int64)
        lut[torch.tensor([i for i, _ in used], dtype=torch.int64)] = torch.arange(len(used))
        for t in atlas.tables.values():
            seen = t.top_photo >= 0
            t.top_photo[seen] = lut[t.top_photo[seen]]
        return [entry for _, entry in used], errors

    return parts
