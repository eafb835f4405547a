"""Serve a page to click any neuron of a real detector: feature maps, one neuron's arithmetic, each box's anchor.

The page opens on the photo with its detections and the forward pass (every stage with this photo's real
shapes). Click a layer: its channels' feature maps, pre and post SiLU. Click a pixel of a map: that neuron's
whole arithmetic (patch, folded weights, bias, z, sigmoid(z), SiLU(z), the framework's value), its receptive
field drawn on the photo. Click a detection: its anchor, all class logits and sigmoids, the CAM. Each photo
runs on first view and everything after is read off that recorded pass (the few most recent passes are kept;
an older one is run again, to the same numbers). Nothing leaves the machine:
page, script and styles are served from the package, and the server listens on 127.0.0.1 unless --host says
otherwise. With --host beyond loopback (0.0.0.0: every interface) it says so in a warning line and prints the
addresses it answers at; at any address it answers only requests that name it in their Host header (a page
elsewhere cannot reach it by pointing its own domain at this machine). The JSON API is described in docs/explore.md.

Examples:
    cardamage explore --weights runs/demo/train/weights/best.pt photo.jpg other.jpg
    cardamage explore --weights best.pt photos/*.jpg --port 9000 --no-browser
    cardamage explore --weights best.pt photo.jpg --host 0.0.0.0    # other machines too: read the warning
    cardamage explore --weights best.pt photo.jpg --atlas runs/atlas   # channels and boxes linked to the atlas
"""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.cli import input_warnings, print_warnings_summary
from pipeline.cli.options import add_trust_weights, image_size, int_range, probability
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError, read_image
from pipeline.explore.app import bound_beyond_loopback, bound_to_every_interface, listen, serve, served_urls
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model, trained_imgsz


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos to explore (each runs on first view; a pass dropped for memory runs again when asked)")
    p.add_argument("--weights", required=True, help="best.pt (trained) or yolov8n.yaml (untrained)")
    p.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    p.add_argument("--conf", type=probability, default=0.25, help="score threshold for detections (default 0.25)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface, "
                        "with a warning)")
    p.add_argument("--port", type=int_range(1, 65535), default=8765, help="port (default 8765)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--atlas", default=None, metavar="DIR",
                   help="a cardamage atlas folder: a channel shows its atlas entry, a box the channels that drove it")
    add_trust_weights(p)


def run(args) -> int:
    photos = []
    # The server runs until Ctrl+C, so the other commands' closing summary would come only then: the start-up
    # reads get their own listener, and the summary is printed once they are done, as the others print it.
    with input_warnings() as warned:
        for photo in args.photos:  # now, not on the first click: each bad photo is one line, the rest are served
            try:
                read_image(photo)  # predict's own reading: a FIFO, an empty or a text file is named here
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                continue
            photos.append(photo)
    print_warnings_summary(warned)
    if not photos:
        raise InputError(args.photos[0] if len(args.photos) == 1 else "explore", "no photo left to serve")
    atlas = None
    if args.atlas:
        atlas = AtlasIndex(args.atlas)  # a missing or broken atlas is one line now, not a 404 later
    yolo = load_model(args.weights, nc=len(CLASS_NAMES), trust=args.trust_weights)
    explorer = Explorer(yolo, photos, imgsz=trained_imgsz(yolo, args.imgsz), conf=args.conf)
    try:
        sock = listen(args.host, args.port)
    except OSError as e:  # port taken, address not available: one line, before anything claims to serve
        raise InputError(f"{args.host}:{args.port}", e.strerror or str(e)) from None
    urls = served_urls(sock, args.host)
    if bound_beyond_loopback(sock):
        where = "every interface" if bound_to_every_interface(sock) else args.host
        print(f"warning: explore listens on {where} ({args.host}:{args.port}), not only on this machine: anyone who "
              "can reach it can read these photos and the model; the default --host 127.0.0.1 keeps it here",
              file=sys.stderr)
    n = len(photos)
    print(f"cardamage explore: {n} photo{'' if n == 1 else 's'} on {', '.join(urls)} (Ctrl+C stops)", file=sys.stderr)
    if not args.no_browser:
        threading.Timer(1.0, webbrowser.open, args=(urls[0],)).start()
    serve(explorer, sock, args.host, atlas=atlas)
    return 0
