"""Prediction as a library: detection records with each box's score and the class logit behind it.

YOLOv8 has no objectness: a box's score is ``sigmoid(logit)`` of the best class output at the anchor
that produced it. Stock Ultralytics reports only the score; ``predict_images`` runs stock predict with
a predictor that also reads the Detect head's raw class output at the anchor Ultralytics' own NMS kept
(``return_idxs``), so ``score == sigmoid(logit)`` for every detection. ``predict_paths`` adds files,
folders and globs, bad-file reporting, overlays and ``detections.json``, and hands folders and batches
to the engine (``pipeline.model.engine``); the records have one schema (``pipeline.model.detections``).

Examples:
    >>> from pipeline.model.load import load_model
    >>> from pipeline.model.predict import predict_images, predict_paths
    >>> yolo = load_model("runs/demo/train/weights/best.pt")
    >>> records, errors = predict_paths(yolo, ["photos/"], "runs/predict", conf=0.25)
    >>> dets = predict_images(yolo, [cv2.imread("car.jpg")])[0]
    >>> sorted(dets[0])
    ['box_xyxy', 'class_id', 'class_name', 'logit', 'score']
"""

from __future__ import annotations

import functools
import gc
import sys
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.files import is_folder
from pipeline.core import heap
from pipeline.core.facts import logit
from pipeline.core.io import (
    InputError,
    atomic_write_image,
    atomic_write_json,
    expand_sources,
    output_folder,
    read_image,
)
from pipeline.core.runtime import progress_bar
from pipeline.model.backends import onnx_available
from pipeline.model.detections import detection_dicts
from pipeline.model.engine import Engine
from pipeline.model.load import trained_imgsz


@functools.lru_cache(maxsize=None)  # one class object, so Ultralytics keeps its predictor between calls
def _logit_predictor_class():
    """A DetectionPredictor that also returns, per kept box, the raw class logit behind its score."""
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.utils import nms

    class LogitPredictor(DetectionPredictor):
        def postprocess(self, preds, img, orig_imgs, **kwargs):
            raw = preds[1] if isinstance(preds, (tuple, list)) and isinstance(preds[1], dict) else None
            dets, idxs = nms.non_max_suppression(
                preds,
                self.args.conf,
                self.args.iou,
                self.args.classes,
                self.args.agnostic_nms,
                max_det=self.args.max_det,
                nc=0,
                end2end=getattr(self.model, "end2end", False),
                return_idxs=True,
            )
            if not isinstance(orig_imgs, list):
                from ultralytics.utils import ops

                orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
            results = self.construct_results(dets, img, orig_imgs)
            for b, (r, det, idx) in enumerate(zip(results, dets, idxs)):
                if raw is None:  # exported backends give no raw head output: invert the sigmoid instead
                    r.logits = _logits_of_scores(det[:, 4])
                else:
                    r.logits = raw["scores"][b, det[:, 5].long(), idx.long()].float()
            return results

    return LogitPredictor


def _logits_of_scores(scores):
    """``facts.logit`` of each score, clamped into [1e-12, 1 - 1e-12] first: a float32 score of exactly 1
    (any logit above ~16.6) gets a finite logit, 27.6, which ``detections.json`` can hold; infinity it cannot."""
    return scores.new_tensor([logit(min(max(p, 1e-12), 1 - 1e-12)) for p in scores.double().tolist()]).float()


#: The longest side a JPEG can hold (its header has 16 bits a side, and libjpeg stops at 65,500).
JPEG_MAX_SIDE = 65500


def label_overlay(image: np.ndarray, record: dict) -> np.ndarray:
    """Draw boxes labelled ``class p=score z=logit`` with Ultralytics' Annotator (its colours, its fonts).

    Draws on ``image`` itself: every caller is done with the photo once its overlay is drawn, and a
    copy of an 8000x8000 photo would cost 183 MB more. A panorama longer than a JPEG can hold (70000 x 4)
    is drawn, then shrunk to ``JPEG_MAX_SIDE``: its overlay could not be written at all otherwise.
    """
    from ultralytics.utils.plotting import Annotator, colors

    ann = Annotator(image, line_width=max(1, round(sum(image.shape[:2]) / 2 * 0.003)))
    for d in record["detections"]:
        ann.box_label(d["box_xyxy"], f"{d['class_name']} p={d['score']:.2f} z={d['logit']:+.2f}", color=colors(d["class_id"], True))
    drawn = ann.result()
    h, w = drawn.shape[:2]
    if max(h, w) > JPEG_MAX_SIDE:
        k = JPEG_MAX_SIDE / max(h, w)
        drawn = cv2.resize(drawn, (max(1, min(JPEG_MAX_SIDE, round(w * k))), max(1, min(JPEG_MAX_SIDE, round(h * k)))),
                           interpolation=cv2.INTER_AREA)
    return drawn


def predict_images(yolo, images: list[np.ndarray], conf: float = 0.25, imgsz: int = 640, iou: float = 0.7, device: str = "cpu"):
    """Run the detector on BGR images one by one (as stock predict does); return per-image detection lists."""
    out = []
    results = yolo.predict(
        images, stream=True, conf=conf, iou=iou, imgsz=imgsz, device=device, verbose=False, save=False, predictor=_logit_predictor_class()
    )
    for r in results:
        out.append(detection_dicts(r.boxes.xyxy, r.boxes.conf, r.boxes.cls, r.logits, yolo.model.names))
    release_photos(yolo)
    return out


def release_photos(yolo) -> None:
    """Drop the references Ultralytics' predictor keeps to the last photos it ran on.

    Its ``batch``, ``results`` and source loader (``dataset``) hold the last photos until the next
    ``predict`` call replaces them, so, photo by photo, the previous photo stayed in memory while the
    next one was decoded (183 MB more for 8000x8000 photos). ``predict`` sets all three afresh on every
    call, so clearing them changes nothing else.
    """
    predictor = getattr(yolo, "predictor", None)
    if predictor is not None:
        predictor.batch = predictor.results = predictor.dataset = None


def overlay_name(path: Path, used: set[str]) -> str:
    """The overlay's file name for ``path``: its stem + .jpg, numbered when another photo took it (adds to ``used``)."""
    name = f"{path.stem}.jpg"
    k = 1
    while name in used:  # photos with the same stem from different folders
        name = f"{path.stem}_{k}.jpg"
        k += 1
    used.add(name)
    return name


def overlay_names(files) -> list[str]:
    """Each photo's overlay name, fixed by input order (``overlay_name``), whichever photos later fail."""
    used: set[str] = set()
    return [overlay_name(Path(f), used) for f in files]


def predict_paths(
    yolo,
    sources: list[str | Path],
    out: str | Path | None,
    conf: float = 0.25,
    imgsz: int | None = None,
    device: str = "cpu",
    overlays: bool = True,
    progress: bool = True,
    batch: int | None = None,
    workers: int | None = None,
    backend: str = "auto",
    overwrite: bool = False,
) -> tuple[list[dict], list[InputError]]:
    """Predict on files/folders/globs; write overlays and ``out/detections.json``; return (records, errors).

    In an existing ``out``, a file of the same name that an earlier cardamage run did not write (the user's
    own, or a link) is refused before any inference, unless ``overwrite`` (``core.io.output_folder``).

    A bad photo is reported (returned in ``errors``) and skipped; the rest of the batch still runs.
    With ``batch`` > 1, or a folder among ``sources``, the batched engine does the work (``batch``
    defaults to ``pipeline.model.engine.DEFAULT_BATCH`` for the device there: 1 on CPU, where the engine's
    gain is ONNX Runtime and decoding ahead, 32 on CUDA; ``workers`` decode threads; ``backend`` as in
    ``pipeline.model.engine.Engine``); otherwise photos go one by one through stock predict. A folder on
    a CPU without ``onnxruntime`` (``backend="auto"``) goes through stock predict too: there the engine
    would be no faster (``_engine_wins``).

    Examples:
        >>> yolo = load_model("runs/demo/train/weights/best.pt")
        >>> records, errors = predict_paths(yolo, ["photos/"], "runs/predict")
        >>> records[0]["detections"][0].keys()
        dict_keys(['class_id', 'class_name', 'score', 'logit', 'box_xyxy'])
    """
    heap.return_freed_memory()  # a folder of big photos: freed decodes go back to the OS at once
    imgsz = trained_imgsz(yolo, imgsz)
    files, errors = expand_sources([str(s) for s in sources])
    if out is None:
        return _predict(yolo, sources, files, errors, None, conf, imgsz, device, overlays, progress, batch, workers, backend)
    inputs = [*(s for s in sources if is_folder(s)), *files, *weights_file(yolo)]
    written = ["detections.json", *(overlay_names(files) if overlays else [])]
    # refused before any inference if it could touch an input, or replace a file of the user's
    with output_folder(out, inputs=inputs, overwrite=overwrite, names=written) as out:
        return _predict(yolo, sources, files, errors, out, conf, imgsz, device, overlays, progress, batch, workers, backend)


def weights_file(yolo) -> list[str]:
    """The weights file ``yolo`` was loaded from, as a one-item list (an input no output may overwrite), or []."""
    path = getattr(yolo, "ckpt_path", None)
    return [path] if path and Path(path).is_file() else []


def _predict(yolo, sources, files, errors, out, conf, imgsz, device, overlays, progress, batch, workers, backend):
    """``predict_paths`` after its checks: the engine for folders and batches, else photo by photo."""
    if (batch is not None and batch > 1) or (any(is_folder(s) for s in sources) and _engine_wins(device, backend)):
        records, file_errors = _predict_batched(yolo, files, out, conf, imgsz, device, overlays, progress, batch, workers, backend)
        return records, errors + file_errors
    records, names = [], overlay_names(files)
    bar = progress_bar(files, desc="predict", unit="img", disable=not progress or len(files) < 2)  # shows img/s
    for i, path in enumerate(bar):
        try:
            image = read_image(path)
        except InputError as e:
            errors.append(e)
            continue
        imports_torchvision = "torchvision" not in sys.modules
        dets = predict_images(yolo, [image], conf=conf, imgsz=imgsz, device=device)[0]
        h, w = image.shape[:2]
        record = {"image": str(path), "width": w, "height": h, "detections": dets}
        if out is not None and overlays:
            name = names[i]
            atomic_write_image(out / name, label_overlay(image, record))
            record["overlay"] = name
        records.append(record)
        del image  # before the next photo is decoded, not after: two large photos would be held at once
        if imports_torchvision:
            # Ultralytics imports torchvision in its first predict, and torch.fx keeps the importing frames,
            # the photo among their locals, in a reference cycle. Collect it once, now, rather than carry
            # the photo until Python's collector gets to it (importing torchvision earlier would put its
            # 150 MB beside the decode of the first photo instead).
            gc.collect()
    if out is not None:
        atomic_write_json(out / "detections.json", records)
    return records, errors


def _engine_wins(device, backend: str) -> bool:
    """Whether a folder goes to the engine: ONNX Runtime on the CPU, a GPU, or a backend asked for by name.

    On a CPU without ``onnxruntime`` the engine could only run its torch backend, which is no faster
    than stock predict (row predict-torch, docs/benchmarks.md), so stock runs the folder photo by photo;
    the records are the same either way.
    """
    return backend != "auto" or str(device).lower() != "cpu" or onnx_available()


def _write_overlay(engine, o, path: Path) -> None:
    """Writer thread: draw ``o``'s boxes on its photo (kept by the engine, or read again) and write it."""
    with engine.photo(o) as image:
        atomic_write_image(path, label_overlay(image, o.record))


def _predict_batched(yolo, files, out, conf, imgsz, device, overlays, progress, batch, workers, backend):
    """The engine path of ``predict_paths``: records in input order, overlays drawn on a writer thread."""
    from concurrent.futures import ThreadPoolExecutor

    draw = out is not None and overlays
    engine = Engine(yolo, imgsz=imgsz, conf=conf, device=device, batch=batch, workers=workers, backend=backend, keep_images=draw)
    names = overlay_names(files)  # fixed by input order, whatever order batches finish in
    done: dict[int, dict] = {}
    failed: dict[int, InputError] = {}
    bar = progress_bar(total=len(files), desc=f"predict ({engine.backend.name}, batch {engine.batch})", unit="img", disable=not progress or len(files) < 2)
    with ThreadPoolExecutor(1, thread_name_prefix="overlay") as writer:
        pending = []
        for o in engine.run(files):
            bar.update(1)
            if o.error is not None:
                failed[o.index] = o.error
                continue
            if draw:
                o.record["overlay"] = names[o.index]
                pending.append(writer.submit(_write_overlay, engine, o, out / names[o.index]))
            done[o.index] = o.record
        for f in pending:
            f.result()  # surfaces a failed write
    bar.close()
    records = [done[i] for i in sorted(done)]
    if out is not None:
        atomic_write_json(out / "detections.json", records)
    return records, [failed[i] for i in sorted(failed)]
