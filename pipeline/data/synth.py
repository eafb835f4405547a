"""Procedural car-damage pictures with YOLO polygon labels: the data a fresh offline machine can train on.

- ``render_scene``: one picture, drawn with OpenCV from a seed: a car (body panel of random colour and
  gloss, windows, lamps, wheels) on a background, under random light, blur, noise and perspective,
  carrying one to three ``Instance`` objects (class id and polygon) of the six CarDD classes, each put
  where that damage occurs: cracks, dents and scratches on paint, shattered glass on a window, a
  broken lamp on a lamp, a flat tire on a wheel.
- ``yolo_rows``: the instances as YOLO segmentation rows, normalised by the picture size.
- ``labelled_scene``: one scene with its boxes as YOLO rows, as a training batch takes them.
- ``write_dataset``: ``{train,val}/{images,labels}`` and a relative ``data.yaml``; the same seed
  gives the same bytes.

Examples:
    >>> from pipeline.data.synth import render_scene, write_dataset, yolo_rows
    >>> img, instances = render_scene(3, imgsz=256)
    >>> img.shape, len(yolo_rows(instances, 256, 256).splitlines()) == len(instances)
    ((256, 256, 3), True)
    >>> write_dataset("datasets/synth", n_train=400, n_val=100, imgsz=320, seed=0)
    PosixPath('datasets/synth/data.yaml')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import atomic_write_bytes, atomic_write_text, make_folder
from pipeline.core.runtime import progress_bar

CRACK, DENT, GLASS, LAMP, SCRATCH, TIRE = range(6)


@dataclass
class Instance:
    """One damage instance: class id and polygon in pixel coordinates (N x 2, float)."""

    cls: int
    polygon: np.ndarray

    def box_xyxy(self) -> np.ndarray:
        return np.concatenate([self.polygon.min(0), self.polygon.max(0)])


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull of drawn points: the instance outline a labeller would click around."""
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)


def _ellipse_poly(cx, cy, ax, ay, angle=0.0, n=24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = np.cos(angle), np.sin(angle)
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.stack([cx + x * ca - y * sa, cy + x * sa + y * ca], 1)


def _jagged_path(rng, start, direction, length, steps, wiggle) -> np.ndarray:
    """A random walk with momentum: the shape of a crack or a crack branch."""
    pts = [np.asarray(start, float)]
    angle = direction
    seg = length / steps
    for _ in range(steps):
        angle += rng.normal(0, wiggle)
        pts.append(pts[-1] + seg * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(pts)


# ----------------------------------------------------------------------------------------- the car
def _background(rng, s: int) -> np.ndarray:
    """Sky-to-ground gradient with a horizon: a parking lot, a street, a garage."""
    top = rng.integers(60, 230, 3)
    bottom = rng.integers(30, 160, 3)
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    column = (top * (1 - t) + bottom * t).astype(np.float32)
    column[int(s * rng.uniform(0.35, 0.6)) :] *= rng.uniform(0.55, 0.9)  # below the horizon
    return cv2.resize(column, (s, s), interpolation=cv2.INTER_NEAREST)


def _draw_car(rng, img: np.ndarray) -> dict:
    """Draw a side/three-quarter view car; return where its parts are so damage lands on them."""
    s = img.shape[0]
    color = rng.integers(20, 235, 3).astype(np.float32)
    x0, x1 = s * rng.uniform(0.02, 0.12), s * rng.uniform(0.88, 0.98)
    y_roof, y_belt, y_sill = s * rng.uniform(0.18, 0.3), s * rng.uniform(0.38, 0.48), s * rng.uniform(0.7, 0.8)
    w = x1 - x0
    body = np.array(
        [
            [x0, y_belt + 0.04 * s],
            [x0 + 0.02 * w, y_belt],
            [x0 + 0.22 * w, y_belt - 0.02 * s],
            [x0 + 0.32 * w, y_roof],
            [x0 + 0.68 * w, y_roof],
            [x0 + 0.8 * w, y_belt - 0.02 * s],
            [x1 - 0.01 * w, y_belt + 0.01 * s],
            [x1, y_sill - 0.03 * s],
            [x1 - 0.02 * w, y_sill],
            [x0 + 0.02 * w, y_sill],
        ]
    )
    cv2.fillPoly(img, [body.astype(np.int32)], color.tolist(), cv2.LINE_AA)
    # gloss: a bright band along the body, stronger for glossy paint
    gloss = rng.uniform(0.1, 0.5)
    # drawn at 1/8 scale and blown up: the blur is free and the band stays soft
    q = 8
    band = np.zeros((s // q, s // q), np.float32)
    yb = int(y_belt + rng.uniform(0.02, 0.12) * s) // q
    cv2.line(band, (int(x0) // q, yb), (int(x1) // q, yb - int(0.05 * s) // q), gloss * 255, max(1, s // (30 * q)), cv2.LINE_AA)
    band = cv2.resize(cv2.GaussianBlur(band, (0, 0), 1.0), (s, s), interpolation=cv2.INTER_LINEAR)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [body.astype(np.int32)], 1)
    cv2.add(img, cv2.merge([band] * 3), dst=img, mask=mask)
    # windows (dark tinted glass)
    glass_color = rng.integers(20, 90, 3).tolist()
    mid = x0 + 0.5 * w
    win_front = np.array(
        [[x0 + 0.34 * w, y_roof + 0.02 * s], [mid - 0.02 * w, y_roof + 0.02 * s], [mid - 0.02 * w, y_belt - 0.02 * s], [x0 + 0.25 * w, y_belt - 0.02 * s]]
    )
    win_rear = np.array(
        [[mid + 0.02 * w, y_roof + 0.02 * s], [x0 + 0.66 * w, y_roof + 0.02 * s], [x0 + 0.77 * w, y_belt - 0.02 * s], [mid + 0.02 * w, y_belt - 0.02 * s]]
    )
    for win in (win_front, win_rear):
        cv2.fillPoly(img, [win.astype(np.int32)], glass_color, cv2.LINE_AA)
    # lamps: head lamp at the front, tail lamp at the back
    lamp_h = (y_sill - y_belt) * 0.22
    head = (x0 + 0.035 * w, y_belt + 0.08 * s, 0.03 * w, lamp_h)
    tail = (x1 - 0.03 * w, y_belt + 0.08 * s, 0.025 * w, lamp_h)
    cv2.ellipse(img, (int(head[0]), int(head[1])), (int(head[2]), int(head[3])), 0, 0, 360, (200, 240, 250), -1, cv2.LINE_AA)
    cv2.ellipse(img, (int(tail[0]), int(tail[1])), (int(tail[2]), int(tail[3])), 0, 0, 360, (30, 30, 200), -1, cv2.LINE_AA)
    # wheels
    r = (y_sill - y_belt) * rng.uniform(0.45, 0.55)
    wheels = [(x0 + 0.2 * w, y_sill, r), (x0 + 0.8 * w, y_sill, r)]
    for cx, cy, rr in wheels:
        cv2.circle(img, (int(cx), int(cy)), int(rr), (25, 25, 25), -1, cv2.LINE_AA)
        cv2.circle(img, (int(cx), int(cy)), int(rr * 0.55), (170, 170, 175), -1, cv2.LINE_AA)
    # paint damage lands on the door band, above the wheel arches
    panel = np.array([[x0 + 0.05 * w, y_belt + 0.03 * s], [x1 - 0.05 * w, y_belt + 0.55 * (y_sill - y_belt)]])
    return dict(color=color, panel=panel, windows=[win_front, win_rear], lamps=[head, tail], wheels=wheels, r=r)


# -------------------------------------------------------------------------------------- the damage
def _point_on_panel(rng, car, margin=0.0) -> np.ndarray:
    (px0, py0), (px1, py1) = car["panel"]
    return np.array([rng.uniform(px0 + margin, px1 - margin), rng.uniform(py0, py1)])


def _crack(rng, img, car, s) -> Instance:
    """Dark branching fracture lines in the paint (bumper cracks)."""
    start = _point_on_panel(rng, car)
    length = s * rng.uniform(0.12, 0.25)
    main = _jagged_path(rng, start, rng.uniform(0, 2 * np.pi), length, 10, 0.35)
    paths = [main]
    for _ in range(rng.integers(2, 5)):
        i = rng.integers(2, len(main) - 1)
        paths.append(_jagged_path(rng, main[i], rng.uniform(0, 2 * np.pi), length * rng.uniform(0.25, 0.5), 5, 0.4))
    # a dark fissure with a light chipped edge beside it: visible on black and on white paint alike
    dark = (car["color"] * 0.15).tolist()
    edge = np.clip(car["color"] * 0.5 + 130, 0, 255).tolist()
    width = max(2, round(s / 128))
    for p in paths:
        cv2.polylines(img, [(p + 1).astype(np.int32)], False, edge, max(1, width - 1), cv2.LINE_AA)
        cv2.polylines(img, [p.astype(np.int32)], False, dark, width, cv2.LINE_AA)
    return Instance(CRACK, _hull(np.concatenate(paths)))


def _dent(rng, img, car, s) -> Instance:
    """A shallow bowl in the panel: light on one rim, shadow on the other, a crease highlight."""
    c = _point_on_panel(rng, car, margin=0.05 * s)
    ax, ay = s * rng.uniform(0.06, 0.12), s * rng.uniform(0.04, 0.08)
    ang = rng.uniform(-0.5, 0.5)
    # shade only the dent's bounding square: a full-image grid costs more than the rest of the scene
    h, w = img.shape[:2]
    rad = int(max(ax, ay)) + 1
    x0, y0 = max(int(c[0]) - rad, 0), max(int(c[1]) - rad, 0)
    x1, y1 = min(int(c[0]) + rad, w), min(int(c[1]) + rad, h)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - c[0], yy - c[1]
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / ax
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ay
    r2 = u * u + v * v
    shade = np.where(r2 < 1, -0.8 * u * np.sqrt(np.clip(1 - r2, 0, 1)) - 0.25 * (1 - r2), 0)
    img[y0:y1, x0:x1] += (shade * 255)[..., None]
    cv2.ellipse(img, (int(c[0]), int(c[1])), (int(ax * 0.5), int(ay * 0.35)), np.degrees(ang), 200, 340, (235, 235, 235), max(1, s // 200), cv2.LINE_AA)
    return Instance(DENT, _ellipse_poly(c[0], c[1], ax, ay, ang))


def _scratch(rng, img, car, s) -> Instance:
    """A bundle of thin near-parallel light streaks where the clear coat is scraped off."""
    c = _point_on_panel(rng, car)
    length = s * rng.uniform(0.15, 0.35)
    ang = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0)
    d = np.array([np.cos(ang), np.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    # scraped clear coat shows lighter on dark paint and as grey primer on light paint
    bright = float(car["color"].mean()) > 150
    light = (np.full(3, 95.0) if bright else np.clip(car["color"] * 0.3 + 170, 0, 255)).tolist()
    width = max(1, round(s / 128))
    pts = []
    for _ in range(rng.integers(3, 8)):
        off = nrm * rng.normal(0, s * 0.012)
        a = c + off + d * rng.uniform(-0.1, 0.1) * length
        b = a + d * length * rng.uniform(0.6, 1.0) + nrm * rng.normal(0, s * 0.01)
        cv2.line(img, tuple(a.astype(int)), tuple(b.astype(int)), light, width, cv2.LINE_AA)
        pts += [a, b]
    return Instance(SCRATCH, _hull(np.array(pts)))


def _glass(rng, img, car, s) -> Instance:
    """A spider-web on a window: radial cracks from an impact point crossed by rings."""
    win = car["windows"][rng.integers(0, 2)]
    lo, hi = win.min(0), win.max(0)
    c = lo + (hi - lo) * rng.uniform(0.3, 0.7, 2)
    rmax = min(hi - lo) * rng.uniform(0.35, 0.55)
    color = (225, 230, 235)
    spokes = []
    for k in range(rng.integers(7, 12)):
        ang = 2 * np.pi * k / 10 + rng.normal(0, 0.15)
        p = _jagged_path(rng, c, ang, rmax * rng.uniform(0.7, 1.0), 4, 0.15)
        cv2.polylines(img, [p.astype(np.int32)], False, color, max(1, round(s / 256)), cv2.LINE_AA)
        spokes.append(p)
    for frac in (0.35, 0.7):
        ring = _ellipse_poly(c[0], c[1], rmax * frac, rmax * frac, 0, 12)
        cv2.polylines(img, [ring.astype(np.int32)], True, color, 1, cv2.LINE_AA)
    cv2.circle(img, tuple(c.astype(int)), max(2, int(rmax * 0.08)), (250, 250, 250), -1, cv2.LINE_AA)
    return Instance(GLASS, _hull(np.concatenate(spokes)))


def _lamp(rng, img, car, s) -> Instance:
    """A smashed lamp: dark holes in the lens, shards and cracks across it."""
    cx, cy, ax, ay = car["lamps"][rng.integers(0, 2)]
    holes = []
    for _ in range(rng.integers(2, 4)):
        p = np.array([cx, cy]) + rng.normal(0, 0.4, 2) * [ax, ay]
        shard = p + rng.normal(0, 1, (5, 2)) * min(ax, ay) * 0.45
        cv2.fillPoly(img, [_hull(shard).astype(np.int32)], (15, 15, 15), cv2.LINE_AA)
        holes.append(shard)
    for _ in range(3):
        p = _jagged_path(rng, [cx, cy], rng.uniform(0, 2 * np.pi), max(ax, ay) * 0.9, 3, 0.3)
        cv2.polylines(img, [p.astype(np.int32)], False, (245, 245, 245), 1, cv2.LINE_AA)
    outline = _ellipse_poly(cx, cy, ax * 1.1, ay * 1.1)
    return Instance(LAMP, _hull(np.concatenate([outline, *holes])))


def _tire(rng, img, car, s) -> Instance:
    """A flat tyre: the wheel sags, the rubber bulges wide at the ground."""
    k = rng.integers(0, 2)
    cx, cy, r = car["wheels"][k]
    cv2.circle(img, (int(cx), int(cy)), int(r) + 1, car["color"].tolist(), -1)  # erase the round tyre
    sag = r * rng.uniform(0.2, 0.3)
    tyre = np.concatenate(
        [_ellipse_poly(cx, cy, r, r, 0, 32)[:16], _ellipse_poly(cx, cy + r * 0.1, r * 1.25, r - sag, 0, 32)[16:]]
    )
    tyre[:16, 1] = np.minimum(tyre[:16, 1], cy + r - sag)
    cv2.fillPoly(img, [tyre.astype(np.int32)], (22, 22, 22), cv2.LINE_AA)
    cv2.ellipse(img, (int(cx), int(cy - sag * 0.3)), (int(r * 0.55), int(r * 0.5)), 0, 0, 360, (170, 170, 175), -1, cv2.LINE_AA)
    return Instance(TIRE, tyre)


_DRAW = {CRACK: _crack, DENT: _dent, GLASS: _glass, LAMP: _lamp, SCRATCH: _scratch, TIRE: _tire}


# ------------------------------------------------------------------------------------- the scene
def render_scene(seed: int | np.random.Generator, imgsz: int = 640) -> tuple[np.ndarray, list[Instance]]:
    """Draw one square scene; return (BGR uint8 image, instances with pixel polygons).

    Args:
        seed: an int (or a numpy Generator) that fixes every random choice: same seed -> same pixels.
        imgsz: side of the square image in pixels.

    Examples:
        >>> img, inst = render_scene(0, 320)
        >>> img.shape, sorted({i.cls for i in inst}) <= list(range(6))
        ((320, 320, 3), True)
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    s = imgsz
    img = _background(rng, s)
    car = _draw_car(rng, img)
    # one to three damages; tyre and lamp at most once per wheel/lamp pair keeps them separable
    classes = rng.choice(6, size=rng.integers(1, 4), replace=False)
    instances = [_DRAW[int(c)](rng, img, car, s) for c in classes]
    # lighting (global gain, a soft light gradient) and sensor noise, in one float pass
    gain = rng.uniform(0.7, 1.25)
    gx = np.linspace(rng.uniform(-0.15, 0), rng.uniform(0, 0.15), s, dtype=np.float32)[None, :, None] * 255
    noise = cv2.resize(rng.normal(0, 6, (s // 4, s // 4, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_NEAREST)
    img *= gain
    img += gx
    img += noise
    img = np.clip(img, 0, 255, out=img).astype(np.uint8)
    # perspective: the camera is never square to the car
    src = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
    dst = (src + rng.uniform(-0.06, 0.06, (4, 2)) * s).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    img = cv2.warpPerspective(img, m, (s, s), borderMode=cv2.BORDER_REFLECT)
    for inst in instances:
        inst.polygon = cv2.perspectiveTransform(inst.polygon[None].astype(np.float32), m)[0]
        inst.polygon = np.clip(inst.polygon, 0, s - 1)
    if rng.random() < 0.5:  # focus / motion blur
        k = int(rng.integers(1, 3)) * 2 + 1
        img = cv2.GaussianBlur(img, (k, k), 0)
    if rng.random() < 0.5:  # mirrored scenes: cars face both ways
        img = cv2.flip(img, 1)
        for inst in instances:
            inst.polygon[:, 0] = s - 1 - inst.polygon[:, 0]
    return img, [i for i in instances if np.ptp(i.polygon[:, 0]) > 2 and np.ptp(i.polygon[:, 1]) > 2]


def yolo_rows(instances: list[Instance], w: int, h: int) -> str:
    """YOLO segmentation rows: ``cls x1 y1 x2 y2 ...`` normalised to [0, 1]."""
    lines = []
    for inst in instances:
        xy = np.clip(inst.polygon / [w, h], 0, 1)
        lines.append(f"{inst.cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
    return "\n".join(lines) + ("\n" if lines else "")


def labelled_scene(seed: int, imgsz: int = 640) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One synthetic scene and its boxes as YOLO rows ``(class, xc, yc, w, h)`` normalised to [0, 1].

    What a training batch needs from a scene (``pipeline.lesson.gradients.make_batch`` takes these pairs):
    the gradient lesson pads a one-photo batch with such scenes.

    Examples:
        >>> img, boxes = labelled_scene(1000, 320)
        >>> img.shape, all(0 <= v <= 1 for b in boxes for v in b[1:])
        ((320, 320, 3), True)
    """
    img, instances = render_scene(seed, imgsz)
    h, w = img.shape[:2]
    boxes = []
    for inst in instances:
        x0, y0, x1, y1 = (float(v) for v in inst.box_xyxy())
        boxes.append((inst.cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
    return img, boxes


def _drop_stale(split_dir: Path, split: str, n: int) -> None:
    """Remove images and labels an earlier, larger run left past index ``n``: the folder then holds exactly
    the dataset asked for (only files named as this generator names them are touched)."""
    pattern = re.compile(rf"{split}_(\d{{5}})\.(jpg|txt)")
    for sub in ("images", "labels"):
        for f in (split_dir / sub).iterdir():
            m = pattern.fullmatch(f.name)
            if m and int(m.group(1)) >= n and f.is_file():
                f.unlink()


def write_dataset(out: str | Path, n_train: int = 400, n_val: int = 100, imgsz: int = 640, seed: int = 0, progress: bool = True) -> Path:
    """Write ``out/{train,val}/{images,labels}`` and ``out/data.yaml``; return the YAML path.

    Image ``i`` of split ``k`` is drawn from seed ``(seed, k, i)``, so a larger dataset begins with
    the images of a smaller one and every file is reproducible on its own. Writing a smaller dataset over
    a larger one removes the larger one's extra images and labels.
    """
    out = Path(out)
    for k, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        make_folder(out / split / "images")  # one line if it cannot be made; removed again if the run fails empty
        make_folder(out / split / "labels")
        for i in progress_bar(range(n), desc=f"synth {split}", disable=not progress or n == 0):
            img, inst = render_scene(np.random.default_rng([seed, k, i]), imgsz)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            atomic_write_bytes(out / split / "images" / f"{split}_{i:05d}.jpg", buf.tobytes())
            atomic_write_text(out / split / "labels" / f"{split}_{i:05d}.txt", yolo_rows(inst, imgsz, imgsz))
        _drop_stale(out / split, split, n)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    yaml = (
        f"# Synthetic car damage drawn by `cardamage synth --seed {seed} --imgsz {imgsz}`.\n"
        "# Paths are relative to this file (no `path:` key on purpose).\n"
        f"train: train/images\nval: val/images\nnc: {len(CLASS_NAMES)}\nnames:\n{names}\n"
    )
    return atomic_write_text(out / "data.yaml", yaml)
