"""Detect damage in photos: overlays plus ``detections.json`` with each box's sigmoid score and its logit.

YOLOv8 has no objectness: a box's score is ``sigmoid(logit)`` of the best class output at the anchor
that produced it. Stock Ultralytics reports only the score; this stage keeps the logit too, read from
the Detect head's raw class output at the very anchor Ultralytics' own NMS kept (``return_idxs``),
so ``score == sigmoid(logit)`` holds for every detection and a student can see where it came from.

Examples:
    cardamage predict --weights runs/demo/train/weights/best.pt photos/ --out runs/predict
    cardamage predict --weights best.pt 'shots/*.jpg' car.png --out out --conf 0.1 --imgsz 640
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

from pipeline import runtime  # noqa: F401  (offline env before ultralytics)
from pipeline.io import InputError, atomic_write_image, atomic_write_json, expand_sources, read_image
from pipeline.model import load_model


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
                    r.logits = _inverse_sigmoid(det[:, 4].double()).float()
                else:
                    r.logits = raw["scores"][b, det[:, 5].long(), idx.long()].float()
            return results

    return LogitPredictor


def _inverse_sigmoid(p):
    p = p.clamp(1e-12, 1 - 1e-12)
    return (p / (1 - p)).log()


def _label_overlay(image: np.ndarray, record: dict) -> np.ndarray:
    """Draw boxes labelled ``class p=score z=logit`` with Ultralytics' Annotator (its colours, its fonts)."""
    from ultralytics.utils.plotting import Annotator, colors

    ann = Annotator(image.copy(), line_width=max(1, round(sum(image.shape[:2]) / 2 * 0.003)))
    for d in record["detections"]:
        ann.box_label(d["box_xyxy"], f"{d['class_name']} p={d['score']:.2f} z={d['logit']:+.2f}", color=colors(d["class_id"], True))
    return ann.result()


def predict_images(yolo, images: list[np.ndarray], conf: float = 0.25, imgsz: int = 640, iou: float = 0.7, device: str = "cpu"):
    """Run the detector on BGR images one by one (as stock predict does); return per-image detection lists."""
    out = []
    results = yolo.predict(
        images, stream=True, conf=conf, iou=iou, imgsz=imgsz, device=device, verbose=False, save=False, predictor=_logit_predictor_class()
    )
    names = yolo.model.names
    for r in results:
        boxes = r.boxes
        dets = []
        for xyxy, score, cls, logit in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), r.logits.tolist()):
            dets.append(
                {
                    "class_id": int(cls),
                    "class_name": names[int(cls)],
                    "score": float(score),
                    "logit": float(logit),
                    "box_xyxy": [round(float(v), 2) for v in xyxy],
                }
            )
        out.append(dets)
    return out


def _overlay_name(path: Path, used: set[str]) -> str:
    name = f"{path.stem}.jpg"
    k = 1
    while name in used:  # photos with the same stem from different folders
        name = f"{path.stem}_{k}.jpg"
        k += 1
    used.add(name)
    return name


def predict_paths(
    yolo,
    sources: list[str | Path],
    out: str | Path | None,
    conf: float = 0.25,
    imgsz: int = 640,
    device: str = "cpu",
    overlays: bool = True,
    progress: bool = True,
) -> tuple[list[dict], list[InputError]]:
    """Predict on files/folders/globs; write overlays and ``out/detections.json``; return (records, errors).

    A bad photo is reported (returned in ``errors``) and skipped; the rest of the batch still runs.

    Examples:
        >>> yolo = load_model("runs/demo/train/weights/best.pt")
        >>> records, errors = predict_paths(yolo, ["photos/"], "runs/predict")
        >>> records[0]["detections"][0].keys()
        dict_keys(['class_id', 'class_name', 'score', 'logit', 'box_xyxy'])
    """
    from ultralytics.utils import TQDM

    files, errors = expand_sources([str(s) for s in sources])
    out = Path(out) if out is not None else None
    records, used = [], set()
    bar = TQDM(files, desc="predict", unit="img", disable=not progress or len(files) < 2)  # shows img/s
    for path in bar:
        try:
            image = read_image(path)
        except InputError as e:
            errors.append(e)
            continue
        dets = predict_images(yolo, [image], conf=conf, imgsz=imgsz, device=device)[0]
        h, w = image.shape[:2]
        record = {"image": str(path), "width": w, "height": h, "detections": dets}
        if out is not None and overlays:
            name = _overlay_name(path, used)
            atomic_write_image(out / name, _label_overlay(image, record))
            record["overlay"] = name
        records.append(record)
    if out is not None:
        atomic_write_json(out / "detections.json", records)
    return records, errors


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders or globs")
    p.add_argument("--weights", required=True, help="trained weights (.pt) or a model YAML (untrained)")
    p.add_argument("--out", required=True, help="output folder: overlays + detections.json")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--imgsz", type=int, default=640, help="inference size (default 640)")
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index (default cpu)")
    p.add_argument("--no-overlays", action="store_true", help="write detections.json only")


def run(args) -> int:
    yolo = load_model(args.weights)
    records, errors = predict_paths(
        yolo, args.sources, args.out, conf=args.conf, imgsz=args.imgsz, device=args.device, overlays=not args.no_overlays
    )
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    n = sum(len(r["detections"]) for r in records)
    print(f"{len(records)} images, {n} detections, {len(errors)} errors -> {Path(args.out).resolve() / 'detections.json'}")
    return 1 if errors else 0
