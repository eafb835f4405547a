"""The explorer's web server: a Starlette app over an ``Explorer``, and ``serve`` to run it on uvicorn.

Routes (``photo`` is an index into the photos given, from 0)::

    GET /                      the page (static/index.html; its JS and CSS under /static/)
    GET /api/photos            [{index, name}]
    GET /api/summary?photo=I   photo and input shapes, class names, detection count
    GET /api/model[?photo=I]   every Conv block and the head: path, type, in/out shape, kernel, stride, params
    GET /api/stages[?photo=I]  the forward pass, top-level layer by layer, with this photo's shapes
    GET /api/detections?photo=I                      records + anchor, all class logits and sigmoids
    GET /api/featuremap?photo=I&layer=P&channel=C&stage=pre|post   PNG of that map (X-Scale-Lo/Hi headers)
    GET /api/neuron?photo=I&layer=P&channel=C&y=Y&x=X              ``cardamage trace``'s JSON + receptive field
    GET /api/effect?photo=I&layer=P&channel=C&y=Y&x=X              that neuron's effect on box 0's class logit
    GET /api/image?photo=I, /api/cam?photo=I         the photo, EigenCAM over it (JPEG)
    GET /api/drivers?photo=I&box=B   the channels that drove box B's score (``analysis.drivers.box_drivers``)
    GET /api/atlas/channel?layer=P&channel=C   that channel's atlas entry (``{"atlas": false}`` without ``--atlas``)
    GET /atlas/...                   the atlas folder's pages and crops (with ``--atlas``)

A bad parameter is answered 400 with ``{"error": "..."}`` and logged as one line; the handlers are plain
functions, which Starlette runs in its thread pool, so a slow first run of one photo does not block others.

A served app answers only requests whose ``Host`` header names the address it serves (``served_hosts``,
through Starlette's ``TrustedHostMiddleware``; others get 400 "Invalid host header"): a web page elsewhere
whose own name an attacker points at 127.0.0.1 (DNS rebinding) cannot read the photos through the reader's
browser.

Examples:
    >>> from starlette.testclient import TestClient
    >>> client = TestClient(create_app(Explorer(load_model("best.pt"), ["photo.jpg"])))
    >>> client.get("/api/neuron", params={"photo": 0, "layer": "model.0", "channel": 3, "y": 5, "x": 7}).json()
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.analysis.drivers import box_drivers
from pipeline.explore.session import BadRequest, Explorer, _int

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("cardamage.explore")


def _finite(obj):
    """JSON has no NaN or infinity: replace them by ``None`` (the page shows them as "n/a")."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class StrictJSON(JSONResponse):
    """``JSONResponse`` that never fails on a non-finite float (it would turn the answer into a 500)."""

    def render(self, content) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _guarded(fn):
    """Turn ``BadRequest`` into 400 ``{"error"}``; anything else into 500 ``{"error"}`` with one log line."""

    def endpoint(request):
        try:
            return fn(request)
        except BadRequest as e:
            log.info("400 %s: %s", request.url.path, e)
            return StrictJSON({"error": str(e)}, status_code=400)
        except Exception as e:  # noqa: BLE001  a bug, not the client's fault: one line, no traceback page
            log.error("500 %s: %s: %s", request.url.path, type(e).__name__, e)
            return StrictJSON({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    return endpoint


def _atlas_routes(explorer: Explorer, atlas) -> list:
    """The routes that link detections to the channel atlas (``cardamage explore --atlas``)."""

    def drivers(params):
        run = explorer.run(explorer.photo_index(params))
        box = _int(params, "box", 0, len(run.head_trace))
        top = _int({"top": params.get("top", "8")}, "top", 1, 65)
        out = box_drivers(run, box, top=top)
        out.pop("per_layer")
        for d in out["drivers"]:  # the link only where the atlas holds that channel (it may cover some blocks only)
            known = atlas is not None and atlas.entry(d["layer"], d["channel"]) is not None
            d["atlas"] = atlas.page(d["layer"], d["channel"]) if known else None
        return out

    def channel(params):
        if atlas is None:  # answered, not 404: the page asks on every thumbnail click and a 404 is a console error
            return {"atlas": False}
        layer = params.get("layer") or ""
        entry = atlas.entry(layer, _int(params, "channel", 0))
        if entry is None:
            raise BadRequest(f"the atlas has no channel {params.get('channel')} of {layer[:60]!r}")
        return {"atlas": True, **entry}

    routes = [Route("/api/drivers", _guarded(lambda request: StrictJSON(drivers(dict(request.query_params))))),
              Route("/api/atlas/channel", _guarded(lambda request: StrictJSON(channel(dict(request.query_params)))))]
    if isinstance(atlas, AtlasIndex):
        routes.append(Mount("/atlas", app=StaticFiles(directory=atlas.root, html=True), name="atlas"))
    return routes


def create_app(explorer: Explorer, allowed_hosts: Sequence[str] | None = None, atlas=None) -> Starlette:
    """The Starlette app serving ``explorer``'s answers and the page (everything from the package).

    Args:
        explorer: what the API answers from.
        allowed_hosts: the ``Host`` header values answered (``served_hosts``); any other gets 400. ``None``: no
            check, for in-process clients such as Starlette's ``TestClient``. ``serve`` and ``running`` always
            pass them.
        atlas: an ``analysis.atlas_format.AtlasIndex`` to link channels and boxes to (``None``: no atlas).

    Examples:
        >>> sock = listen("127.0.0.1", 8765)
        >>> app = create_app(Explorer(load_model("best.pt"), ["photo.jpg"]), served_hosts(sock))
    """

    def q(request) -> dict:
        return dict(request.query_params)

    def json_of(method):
        return _guarded(lambda request: StrictJSON(method(q(request))))

    def featuremap(request):
        png, scale = explorer.featuremap(q(request))
        headers = {f"X-Scale-{k.title()}": repr(v) for k, v in scale.items()}
        return Response(png, media_type="image/png", headers={**headers, "Cache-Control": "max-age=3600"})

    def image(method):
        return _guarded(lambda request: Response(method(q(request)), media_type="image/jpeg",
                                                 headers={"Cache-Control": "max-age=3600"}))

    def index(request):
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [
        Route("/", index),
        Route("/api/photos", _guarded(lambda request: StrictJSON(explorer.photos_list()))),
        Route("/api/summary", json_of(explorer.summary)),
        Route("/api/model", json_of(explorer.model)),
        Route("/api/stages", json_of(explorer.stages)),
        Route("/api/detections", json_of(explorer.detections)),
        Route("/api/labels", json_of(explorer.labels)),
        Route("/api/neuron", json_of(explorer.neuron)),
        Route("/api/effect", json_of(explorer.effect)),
        Route("/api/featuremap", _guarded(featuremap)),
        Route("/api/image", image(explorer.photo_png)),
        Route("/api/cam", image(explorer.cam)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *_atlas_routes(explorer, atlas),
    ]

    async def not_found(request, exc):
        return StrictJSON({"error": f"no such page: {request.url.path}"}, status_code=getattr(exc, "status_code", 404))

    middleware = [] if allowed_hosts is None else [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, middleware=middleware)


#: Host header values that name the loopback interface.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as an IP, an IPv4-mapped IPv6 one (``::ffff:127.0.0.1``) as its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%")[0])  # "%eth0": an IPv6 zone
    return getattr(ip, "ipv4_mapped", None) or ip


def _in_url(address: str) -> str:
    """An address as a URL or a Host header writes it: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def machine_addresses(family: int | None = None) -> list[str]:
    """This machine's own addresses (loopback excluded), read from its interfaces, no DNS; ``family``:
    ``socket.AF_INET`` or ``AF_INET6`` only. IPv6 link-local addresses are left out: a URL would need a zone."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family in (socket.AF_INET, socket.AF_INET6) and family in (None, a.family):
                ip = _ip(a.address)
                if not ip.is_loopback and not ip.is_link_local and str(ip) not in found:
                    found.append(str(ip))
    return found


def bound_beyond_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` (from ``listen``) can be reached from other machines."""
    return not _ip(sock.getsockname()[0]).is_loopback


def bound_to_every_interface(sock: socket.socket) -> bool:
    """Whether ``sock`` listens on every interface (0.0.0.0 or ::)."""
    return _ip(sock.getsockname()[0]).is_unspecified


def _wildcard_addresses(sock: socket.socket) -> list[str] | None:
    """The machine's addresses a wildcard ``sock`` is reachable at (an IPv6 one takes IPv4 too), else None."""
    if not bound_to_every_interface(sock):
        return None
    dual = sock.family == socket.AF_INET6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    return machine_addresses(None if dual else sock.family)


def served_hosts(sock: socket.socket, host: str | None = None) -> list[str]:
    """The ``Host`` header values to answer on ``sock``: the address it is bound to and ``host`` (the name it was
    asked to listen on); the loopback names when bound to loopback or to every interface; and, for every
    interface, the machine's own addresses and hostname. Ports are not compared: the request reached this socket.

    A wildcard bind's own address (``0.0.0.0``, ``::``) and the name it was asked for (``0``, ``""``) are left
    out: they name no machine, yet a browser sends a request for ``http://0.0.0.0:PORT/`` to this machine, so a
    web page elsewhere could reach the explorer through them (the "0.0.0.0 day" route to local services).
    """
    bound = sock.getsockname()[0]
    wildcard = _wildcard_addresses(sock)
    hosts = [] if wildcard is not None else [_in_url(bound)] + ([_in_url(host)] if host else [])
    if wildcard is not None or _ip(bound).is_loopback:
        hosts += LOOPBACK_HOSTS
    if wildcard is not None:
        hosts += [*map(_in_url, wildcard), socket.gethostname()]
    return list(dict.fromkeys(h.lower() for h in hosts))


def served_urls(sock: socket.socket, host: str) -> list[str]:
    """Where ``sock`` (``listen(host, port)``) answers, as URLs: the loopback one first for a wildcard bind."""
    port = sock.getsockname()[1]
    wildcard = _wildcard_addresses(sock)
    if wildcard is None:
        return [f"http://{_in_url(_unmapped(host))}:{port}/"]
    ipv4 = sock.family == socket.AF_INET or not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    return [f"http://{a}:{port}/" for a in ["127.0.0.1" if ipv4 else "[::1]", *map(_in_url, wildcard)]]


def _unmapped(host: str) -> str:
    """``host``, an IPv4-mapped IPv6 address (``::ffff:0.0.0.0``) written as the IPv4 address it maps."""
    try:
        ip = _ip(host)
    except ValueError:  # a name, not an address
        return host
    return str(ip) if isinstance(ip, ipaddress.IPv4Address) and ":" in host else host


def listen(host: str = "127.0.0.1", port: int = 8765) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything is announced (OSError if the port is taken).

    An IPv4-mapped address (``::ffff:0.0.0.0``) is bound as the IPv4 address it maps: an IPv6 socket bound to it
    takes IPv4 connections only, and the addresses printed must be the ones that answer."""
    host = _unmapped(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(explorer: Explorer, sock: socket.socket, host: str | None = None, log_level: str = "warning",
          atlas=None) -> None:
    """Run the app on uvicorn over ``sock`` (from ``listen(host, port)``) until interrupted; it answers only the
    ``Host`` headers of ``served_hosts(sock, host)``."""
    import uvicorn

    config = uvicorn.Config(create_app(explorer, served_hosts(sock, host), atlas), log_level=log_level, access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def running(explorer: Explorer, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0,
            atlas=None) -> Iterator[str]:
    """The app served on a background thread while the block runs; yields its base URL (port 0: a free one).

    For scripts and tests that ask the real server over HTTP from the same process.

    Examples:
        >>> with running(Explorer(yolo, ["photo.jpg"])) as base:
        ...     httpx.get(f"{base}/api/summary").json()
    """
    import uvicorn

    sock = listen(host, port)
    app = create_app(explorer, served_hosts(sock, host), atlas)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sock.close()
            raise RuntimeError("the explorer's server did not start")
        time.sleep(0.02)
    try:
        yield served_urls(sock, host)[0].rstrip("/")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
