"""Serve a page to click any neuron of a real detector: feature maps, one neuron's arithmetic, each box's anchor.

The page opens on the photo with its detections and the forward pass (every stage with this photo's real
shapes). Click a layer: its channels' feature maps, pre and post SiLU. Click a pixel of a map: that neuron's
whole arithmetic (patch, folded weights, bias, z, sigmoid(z), SiLU(z), the framework's value), its receptive
field drawn on the photo. Click a detection: its anchor, all class logits and sigmoids, the CAM. Each photo
runs once, on first view; everything after is read off that recorded pass. Nothing leaves the machine:
page, script and styles are served from the package, and the server listens on 127.0.0.1 unless --host says
otherwise. The JSON API is described in docs/explore.md.

Examples:
    cardamage explore --weights runs/demo/train/weights/best.pt photo.jpg other.jpg
    cardamage explore --weights best.pt photos/*.jpg --port 9000 --no-browser
    cardamage explore --weights best.pt photo.jpg --atlas runs/atlas   # channels and boxes linked to the atlas
"""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.cli.options import add_trust_weights, image_size, int_range, probability
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError, validate_image
from pipeline.explore.app import listen, serve
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model, trained_imgsz


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos to explore (each runs once, on first view)")
    p.add_argument("--weights", required=True, help="best.pt (trained) or yolov8n.yaml (untrained)")
    p.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    p.add_argument("--conf", type=probability, default=0.25, help="score threshold for detections (default 0.25)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_range(1, 65535), default=8765, help="port (default 8765)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--atlas", default=None, metavar="DIR",
                   help="a cardamage atlas folder: a channel shows its atlas entry, a box the channels that drove it")
    add_trust_weights(p)


def run(args) -> int:
    for photo in args.photos:  # fail now, not on the first click: a missing or undecodable file is named
        validate_image(photo)
    atlas = None
    if args.atlas:
        atlas = AtlasIndex(args.atlas)  # a missing or broken atlas is one line now, not a 404 later
    yolo = load_model(args.weights, nc=len(CLASS_NAMES), trust=args.trust_weights)
    explorer = Explorer(yolo, args.photos, imgsz=trained_imgsz(yolo, args.imgsz), conf=args.conf)
    try:
        sock = listen(args.host, args.port)
    except OSError as e:  # port taken, address not available: one line, before anything claims to serve
        raise InputError(f"{args.host}:{args.port}", e.strerror or str(e)) from None
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
    n = len(args.photos)
    print(f"cardamage explore: {n} photo{'' if n == 1 else 's'} on {url} (Ctrl+C stops)", file=sys.stderr)
    if not args.no_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    serve(explorer, sock, atlas=atlas)
    return 0
