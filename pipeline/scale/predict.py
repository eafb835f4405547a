"""``cardamage predict --ray``: today's engine in one stateful Ray actor per worker, resumable JSON Lines shards.

The driver expands the sources (``expand_sources``: folders, globs, files and ``.txt`` lists, sorted as
``expand_sources`` gives them), loads the model once and puts it in Ray's object store. Each worker is a
``PredictWorker`` actor: it takes the model from the store once, builds ``pipeline.model.engine.Engine``
once, and runs chunks of ``CHUNK`` photos through it, drawing overlays itself. As each chunk comes back the
driver writes its records to ``DIR/shards/part-NNNNN.jsonl`` (one record per line, the file written
atomically), so a killed run, started again with the same command, reads the shards first and sends out only
the photos not yet done. At the end ``DIR/detections.json`` holds every record in input order: the same
file the single-process ``cardamage predict`` writes.

``DIR/shards/run.json`` names what the shards were computed with (a digest of the model's weights, conf,
imgsz, batch, backend, overlays); a run with other settings is refused rather than mixed in.

Examples:
    cardamage predict --weights best.pt photos/ --out runs/p --ray --workers 2
    cardamage predict --weights best.pt photos.txt --out runs/p --ray 10.0.0.5:6379 --gpus-per-worker 1

    >>> records, errors = ray_predict(load_model("best.pt"), ["photos/"], "runs/p", workers=2)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import types
from pathlib import Path

from pipeline.core.files import is_present
from pipeline.core.io import InputError, atomic_write_image, atomic_write_json, atomic_write_text, expand_sources, output_folder, written_list
from pipeline.core.readback import MAX_JSON_ITEMS, is_number, json_value, read_bounded_text
from pipeline.core.runtime import progress_bar
from pipeline.model.engine import Engine
from pipeline.model.load import detection_model, trained_imgsz
from pipeline.model.predict import label_overlay, overlay_names, weights_file
from pipeline.scale.cluster import LOCAL, chunks, default_workers, ray_session, run_pool

#: Folder of the JSON Lines shards inside the output folder, and the settings file beside them.
SHARDS = "shards"
#: The largest shard read back: a shard holds one chunk's records (a few KB a photo).
MAX_SHARD_BYTES = 64 << 20
RUN_FILE = "run.json"


class PredictWorker:
    """One Ray worker's state: the model (taken once from the object store) and an ``Engine`` kept for every chunk.

    Args:
        net: the ``DetectionModel`` (Ray hands the object-store copy over once, when the actor starts).
        settings: ``conf``, ``imgsz``, ``batch``, ``backend``, ``device`` as for ``Engine``.
        out: the output folder (absolute, on a shared filesystem) to draw overlays into, or None.
        overwrite: replace files there that no cardamage run wrote (the driver checked the names already).

    Examples:
        >>> w = PredictWorker(net, {"conf": 0.25, "imgsz": 640, "batch": None, "backend": "auto", "device": "cpu"}, None)
        >>> w.predict([(0, "/data/a.jpg", None)])
        ([(0, {'image': '/data/a.jpg', ...})], [])
    """

    def __init__(self, net, settings: dict, out: str | None, overwrite: bool = False):
        self.out = Path(out) if out else None
        # the folder's list of what cardamage wrote, open for this worker's life (it lives for one run): each
        # overlay is checked against it and added to it, so a stopped run's overlays are its own on resume
        self._list = contextlib.ExitStack()
        if self.out is not None:
            self._list.enter_context(written_list(self.out, overwrite))
        self.engine = Engine(types.SimpleNamespace(model=net), imgsz=settings["imgsz"], conf=settings["conf"],
                             device=settings["device"], batch=settings["batch"], backend=settings["backend"],
                             keep_images=self.out is not None)

    def ready(self) -> str:
        """The engine's backend name, once the model is loaded (the driver waits for this before timing)."""
        return self.engine.backend.name

    def predict(self, chunk: list[tuple[int, str, str | None]]) -> tuple[list, list]:
        """Run ``[(index, path, overlay name)]``; return ``([(index, record)], [(index, reason)])``."""
        records, errors = [], []
        for o in self.engine.run([path for _, path, _ in chunk]):
            index, _, name = chunk[o.index]
            if o.error is not None:
                errors.append((index, o.error.reason))
                continue
            if self.out is not None and name:
                o.record["overlay"] = name
                with self.engine.photo(o) as image:
                    atomic_write_image(self.out / name, label_overlay(image, o.record))
            records.append((index, o.record))
        return records, errors


def model_digest(net) -> str:
    """SHA-256 of a model's weights and buffers: a resumed run must use the very same numbers.

    Examples:
        >>> model_digest(detection_model(load_model("best.pt")))[:12]
        '3f1c0a9e5b7d'
    """
    h = hashlib.sha256()
    for key, value in net.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()



def record_problem(record) -> str | None:
    """What is wrong with one detections record read back from a shard, or None: the fields detections.json
    promises (an image path, its size, detections of a class id, a score in [0, 1], a finite logit, four finite
    box numbers), and an overlay that is a file name in the run's folder, never a path elsewhere."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("image"), str) or not record["image"]:
        return "'image' is not a path"
    if not all(isinstance(record.get(k), int) and not isinstance(record.get(k), bool) and record[k] > 0
               for k in ("width", "height")):
        return "'width' and 'height' are not whole numbers of pixels"
    overlay = record.get("overlay")
    if overlay is not None and (not isinstance(overlay, str) or not overlay or overlay != Path(overlay).name
                                or overlay in (".", "..")):
        return "'overlay' is not a file name in the run's folder"
    detections = record.get("detections")
    if not isinstance(detections, list):
        return "'detections' is not a list"
    for i, d in enumerate(detections):
        box = d.get("box_xyxy") if isinstance(d, dict) else None
        if (not isinstance(d, dict) or not isinstance(d.get("class_id"), int) or isinstance(d.get("class_id"), bool)
                or d["class_id"] < 0 or not isinstance(d.get("class_name"), str) or not is_number(d.get("score"))
                or not 0 <= d["score"] <= 1 or not is_number(d.get("logit")) or not isinstance(box, list)
                or len(box) != 4 or not all(map(is_number, box))):
            return f"detections[{i}] is not a detection (class_id, class_name, score in [0, 1], logit, box_xyxy)"
    return None


def read_shards(folder: Path, settings: dict) -> tuple[dict[str, dict], int]:
    """Records already done (by image path) and the next free shard number; refuse shards of other settings.

    Examples:
        >>> done, next_part = read_shards(Path("runs/p/shards"), settings)
        >>> len(done), next_part
        (40, 5)
    """
    run_file = folder / RUN_FILE
    if run_file.is_file():
        try:
            before = json_value(read_bounded_text(run_file, "a run's settings", 1 << 20, MAX_JSON_ITEMS))
        except ValueError as e:  # JSON's own words: where it broke ("Expecting value: line 1 column 1 (char 0)")
            raise InputError(run_file, f"cannot read the earlier run's settings (not JSON: {str(e)[:120]}): delete "
                                       "this folder or choose another output folder") from None
        if not isinstance(before, dict):
            raise InputError(run_file, f"cannot read the earlier run's settings (a JSON {type(before).__name__}, not "
                                       "an object): delete this folder or choose another output folder")
        changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise InputError(folder, f"holds shards of a run with other settings ({'; '.join(changed)}): "
                                     "delete this folder or choose another output folder")
    done: dict[str, dict] = {}
    parts = sorted(folder.glob("part-*.jsonl"))
    for part in parts:  # each a chunk's records: a FIFO would hang the read, a huge file take memory
        for n, line in enumerate(read_bounded_text(part, "a shard of detections", MAX_SHARD_BYTES,
                                                              MAX_JSON_ITEMS).splitlines(), 1):
            try:
                record = json_value(line)
            except ValueError:
                record = None
            problem = record_problem(record)
            if problem:
                raise InputError(part, f"line {n} is not a detections record ({problem}); delete the file to redo "
                                       "its photos")
            done[record["image"]] = record
    numbers = [int(p.stem.split("-")[1]) for p in parts if p.stem.split("-")[1].isdigit()]
    return done, max(numbers, default=-1) + 1


def ray_predict(yolo, sources, out, conf: float = 0.25, imgsz: int | None = None, overlays: bool = True,
                batch: int | None = None, backend: str = "auto", address: str = LOCAL, workers: int | None = None,
                gpus_per_worker: float = 0, progress: bool = True, log=None,
                overwrite: bool = False) -> tuple[list[dict], list[InputError]]:
    """Predict on ``sources`` with Ray workers; write overlays, shards and ``out/detections.json``.

    Args:
        yolo: the loaded model (``pipeline.model.load.load_model``); workers get a copy through Ray.
        sources: folders, globs, files and ``.txt`` lists of photos (``expand_sources``).
        out: output folder; an earlier run's folder resumes it (its shards are read first).
        conf, imgsz, batch, backend: as for ``pipeline.model.engine.Engine`` (``imgsz`` defaults to the weights'
            training size, 640 for a YAML).
        overlays: workers draw each photo's boxes into ``out`` (as the single-process run names them).
        address: ``"local"`` (start Ray here) or a cluster address to join.
        workers: Ray workers (default: as many as the cluster's CPUs, or GPUs / ``gpus_per_worker``).
        gpus_per_worker: GPUs per worker (0: CPU workers); a worker with GPUs runs on its first one.
        log: called with a line of progress news (resumed photos, workers); default silent.
        overwrite: replace files of the same names in ``out`` that no cardamage run wrote (as ``predict_paths``).

    Returns:
        ``(records, errors)`` as ``pipeline.model.predict.predict_paths``: records in input order.

    Examples:
        >>> records, errors = ray_predict(yolo, ["photos/", "more.txt"], "runs/p", workers=2, overlays=False)
    """
    log = log or (lambda line: None)
    imgsz = trained_imgsz(yolo, imgsz)
    files, errors = expand_sources(sources)
    inputs = [*(s for s in map(str, sources) if is_present(s)), *files, *weights_file(yolo)]
    names = overlay_names(files)  # fixed by input order, as in the single-process run
    written = ["detections.json", *(names if overlays else [])]
    with output_folder(out, inputs=inputs, overwrite=overwrite, names=written) as out:
        net = detection_model(yolo)
        settings = {"model": model_digest(net), "conf": conf, "imgsz": imgsz, "batch": batch, "backend": backend,
                    "overlays": overlays}
        shard_dir = out / SHARDS
        done, part = read_shards(shard_dir, settings)
        todo = [(i, str(f.resolve()), names[i] if overlays else None) for i, f in enumerate(files) if str(f) not in done]
        results = {i: done[str(f)] for i, f in enumerate(files) if str(f) in done}
        failed: dict[int, InputError] = {}
        log(f"ray: {len(files)} photos, {len(results)} done in earlier shards, {len(todo)} to run")
        if todo:
            atomic_write_json(shard_dir / RUN_FILE, settings)
            with ray_session(address) as ray:
                n = min(workers or default_workers(ray, gpus_per_worker), len(todo))
                tasks = chunks(todo, n)
                worker = dict(settings, device="0" if gpus_per_worker > 0 else "cpu")
                actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(PredictWorker)
                net_ref = ray.put(net)
                actors = [actor.remote(net_ref, worker, str(out.resolve()) if overlays else None, overwrite)
                          for _ in range(n)]
                t0 = time.perf_counter()
                backends = ray.get([a.ready.remote() for a in actors])
                log(f"ray: {n} workers ({backends[0]}) ready in {time.perf_counter() - t0:.2f} s, {len(tasks)} chunks")
                bar = progress_bar(total=len(todo), desc=f"predict (ray, {n} workers)", unit="img", disable=not progress)
                t0 = time.perf_counter()  # the photos alone: Ray's start and the workers' model loads are above

                def finished(_, result) -> None:
                    nonlocal part
                    recs, errs = result
                    for index, record in recs:
                        record["image"] = str(files[index])  # the path as the user gave it, as one process writes
                        results[index] = record
                    for index, reason in errs:
                        failed[index] = InputError(files[index], reason)
                    if recs:
                        lines = "".join(json.dumps(r, allow_nan=False) + "\n" for _, r in sorted(recs, key=lambda x: x[0]))
                        atomic_write_text(shard_dir / f"part-{part:05d}.jsonl", lines)
                        part += 1
                    bar.update(len(recs) + len(errs))

                try:
                    run_pool(ray, actors, "predict", tasks, finished)
                finally:
                    bar.close()
                    for a in actors:
                        ray.kill(a)
                log(f"ray: {len(todo)} photos in {time.perf_counter() - t0:.2f} s on {n} workers")
        records = [results[i] for i in sorted(results)]
        atomic_write_json(out / "detections.json", records)
    return records, errors + [failed[i] for i in sorted(failed)]
