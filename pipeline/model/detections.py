"""Detection records: the one schema of detections.json, and how two runs' detections are compared.

``detection_dicts`` builds the records for both prediction routes; ``match_detections`` and ``agreement``
pair our engine's boxes with stock Ultralytics' (IoU and score tolerance), which tests and benchmarks use;
``match_labels`` pairs a photo's boxes with its labelled damage (hit, duplicate, wrong class, no label, missed)
and ``describe_match`` says it in words.

Examples:
    >>> from pipeline.model.detections import agreement
    >>> agreement(engine_records, stock_records)["ok"]
"""

from __future__ import annotations

import torch


# ----------------------------------------------------------------------------------------------------
# Agreement with stock predict
# ----------------------------------------------------------------------------------------------------


def detection_dicts(boxes_xyxy, scores, classes, logits, names) -> list[dict]:
    """The ``detections`` entries of detections.json: one schema for the stock path (``pipeline.model.predict``)
    and the engine."""
    return [
        {
            "class_id": int(c),
            "class_name": names[int(c)],
            "score": float(s),
            "logit": float(z),
            "box_xyxy": [round(float(v), 2) for v in xyxy],
        }
        for xyxy, s, c, z in zip(boxes_xyxy.tolist(), scores.tolist(), classes.tolist(), logits.tolist())
    ]


def match_detections(a: list[dict], b: list[dict], iou_min: float = 0.99, score_tol: float = 1e-3) -> list[tuple[int, int, float]]:
    """Pair detections of one photo: same class, |score difference| <= ``score_tol``, IoU >= ``iou_min``.

    Greedy, highest score of ``a`` first; each takes the free partner in ``b`` with the closest score
    (then the largest IoU: boxes clipped to the photo's edges can coincide exactly). Returns
    ``(i, j, iou)`` for every pair.
    """
    from torchvision.ops import box_iou

    if not a or not b:
        return []
    iou = box_iou(torch.tensor([d["box_xyxy"] for d in a], dtype=torch.float64), torch.tensor([d["box_xyxy"] for d in b], dtype=torch.float64))
    ds = (torch.tensor([d["score"] for d in a], dtype=torch.float64)[:, None] - torch.tensor([d["score"] for d in b], dtype=torch.float64)[None]).abs()
    same = torch.tensor([d["class_id"] for d in a])[:, None] == torch.tensor([d["class_id"] for d in b])[None]
    ok = same & (ds <= score_tol) & (iou >= iou_min)
    pairs, taken = [], set()
    for i in sorted(range(len(a)), key=lambda k: -a[k]["score"]):
        free = [j for j in ok[i].nonzero().flatten().tolist() if j not in taken]
        if free:
            j = min(free, key=lambda j: (float(ds[i, j]), -float(iou[i, j])))
            taken.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return pairs


def match_labels(detections: list[dict], labels: list[dict], iou_min: float = 0.5) -> dict:
    """Each detection of one photo against the photo's labelled damage, matched as COCO matches for mAP50.

    Highest score first, a detection takes the free label of its own class with the largest IoU >= ``iou_min``
    (``hit``); any other detection is a false positive: ``duplicate`` when its largest overlap (IoU >=
    ``iou_min``) is a label of its class already taken by a higher score, ``wrong class`` when that label is of
    another class, ``no label`` when no label overlaps it that much. A label no detection took is missed.
    ``labels``: ``{"class_id", "class_name", "box_xyxy"}`` in the detections' pixels.

    Returns:
        ``{"iou_min", "detections": [{"verdict", "label", "iou"}, ...] (in the order given),
        "labels": [label + {"found_by", "best_iou"}, ...], "hits", "false_positives", "missed", "own_class":
        [{"label", "iou"}, ...]}``; ``label`` is the index of the label the verdict names (the taken one, else the
        largest overlap), ``iou`` its IoU; ``own_class`` is each box's largest overlap with a label of its own
        class (``label`` ``None`` when the photo has none of that class).

    Examples:
        >>> match_labels(run.detections, run.labels)["detections"][0]
        {'verdict': 'hit', 'label': 0, 'iou': 0.81}
    """
    from torchvision.ops import box_iou  # imported on first use: ~1 s (torch._dynamo) most importers never need

    iou = torch.zeros((len(detections), len(labels)), dtype=torch.float64)
    if detections and labels:
        iou = box_iou(torch.tensor([d["box_xyxy"] for d in detections], dtype=torch.float64),
                      torch.tensor([g["box_xyxy"] for g in labels], dtype=torch.float64))
    same = torch.tensor([[d["class_id"] == g["class_id"] for g in labels] for d in detections], dtype=torch.bool)
    verdicts: list[dict] = [{}] * len(detections)
    found_by: list[int | None] = [None] * len(labels)
    for i in sorted(range(len(detections)), key=lambda k: -detections[k]["score"]):
        free = [j for j in range(len(labels)) if same[i, j] and found_by[j] is None and iou[i, j] >= iou_min]
        if free:
            j = max(free, key=lambda j: float(iou[i, j]))
            found_by[j] = i
            verdict = "hit"
        else:
            j = int(iou[i].argmax()) if labels else None
            verdict = "no label"
            if j is not None and iou[i, j] >= iou_min:  # overlaps a label, yet not a hit
                verdict = "duplicate" if same[i, j] else "wrong class"
        verdicts[i] = {"verdict": verdict, "label": j, "iou": round(float(iou[i, j]), 4) if j is not None else 0.0}
    out_labels = [dict(g, found_by=found_by[j], best_iou=round(float(iou[:, j].max()), 4) if detections else 0.0)
                  for j, g in enumerate(labels)]
    hits = sum(v["verdict"] == "hit" for v in verdicts)
    # each box's best overlap with a label of its own class: what a false positive's reason must name
    own = []
    for i in range(len(detections)):
        js = [j for j in range(len(labels)) if same[i, j]]
        j = max(js, key=lambda j: float(iou[i, j])) if js else None
        own.append({"label": j, "iou": round(float(iou[i, j]), 4) if j is not None else 0.0})
    return {"iou_min": iou_min, "detections": verdicts, "labels": out_labels, "hits": hits,
            "false_positives": len(detections) - hits, "missed": len(labels) - hits, "own_class": own,
            "detection_classes": [int(d["class_id"]) for d in detections],
            "detection_names": [str(d.get("class_name", d["class_id"])) for d in detections]}


def describe_match(check: dict, i: int) -> str:
    """Detection ``i`` of ``match_labels``'s answer in words, as the report and the explorer show it."""
    v = check["detections"][i]
    if v["label"] is None:
        return "false positive: the photo has no labelled damage"
    if v["iou"] == 0:
        return "false positive: it overlaps no labelled damage"
    g = check["labels"][v["label"]]
    own = check["own_class"][i] if "own_class" in check else None
    if v["verdict"] in ("no label", "wrong class") and own is not None and g["class_id"] != _own_class(check, i, g):
        # the overlap is with another class: say first that no label of the box's own class is there
        name = check["detection_names"][i] if "detection_names" in check else None
        mine = f"labelled {name}" if name else "label of its class"
        near = (f" (its largest IoU with a {name} label is {own['iou']:.2f}, a hit needs {check['iou_min']:g})"
                if own["label"] is not None and own["iou"] > 0 else "")
        return (f"false positive: no {mine} here{near}; it overlaps a {g['class_name']} label at IoU "
                f"{v['iou']:.2f}")
    if v["verdict"] == "no label":  # overlaps a label of its own class, too little to count
        return (f"false positive: overlaps labelled {g['class_name']} only at IoU {v['iou']:.2f} "
                f"(a hit needs {check['iou_min']:g})")
    said = {"hit": "found labelled", "duplicate": "false positive: a second box on labelled",
            "wrong class": "false positive: wrong class, it overlaps labelled"}[v["verdict"]]
    return f"{said} {g['class_name']} (IoU {v['iou']:.2f})"


def _own_class(check: dict, i: int, g: dict):
    """Box ``i``'s class id as ``match_labels`` saw it (its ``detection_classes``), else ``g``'s (no claim made)."""
    return check["detection_classes"][i] if "detection_classes" in check else g["class_id"]


def agreement(ours: list[dict], stock: list[dict], iou_min: float = 0.99, score_tol: float = 1e-3) -> dict:
    """Compare two lists of detections.json records photo by photo (same order); ``ok`` if every box pairs up.

    Returns counts (``stock_boxes``, ``our_boxes``, ``matched``, ``unmatched_stock``, ``unmatched_ours``),
    the worst matched pair (``min_iou``, ``max_score_diff``, ``max_logit_diff``) and ``ok``.

    Examples:
        >>> agreement(engine_records, stock_records)["ok"]
        True
    """
    if [r["image"] for r in ours] != [r["image"] for r in stock]:
        raise ValueError("records are for different photos (or in a different order)")
    n_s = n_o = n_m = 0
    min_iou, max_ds, max_dz = 1.0, 0.0, 0.0
    for ro, rs in zip(ours, stock):
        a, b = rs["detections"], ro["detections"]
        pairs = match_detections(a, b, iou_min, score_tol)
        n_s, n_o, n_m = n_s + len(a), n_o + len(b), n_m + len(pairs)
        for i, j, v in pairs:
            min_iou = min(min_iou, v)
            max_ds = max(max_ds, abs(a[i]["score"] - b[j]["score"]))
            if "logit" in a[i] and "logit" in b[j]:  # stock Results carry no logit
                max_dz = max(max_dz, abs(a[i]["logit"] - b[j]["logit"]))
    return {
        "images": len(ours),
        "stock_boxes": n_s,
        "our_boxes": n_o,
        "matched": n_m,
        "unmatched_stock": n_s - n_m,
        "unmatched_ours": n_o - n_m,
        "min_iou": min_iou if n_m else None,
        "max_score_diff": max_ds if n_m else None,
        "max_logit_diff": max_dz if n_m else None,
        "iou_min": iou_min,
        "score_tol": score_tol,
        "ok": n_m == n_s == n_o,
    }
