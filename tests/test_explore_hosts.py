"""``cardamage explore`` answers only requests that name the address it serves, and says where it listens.

A DNS-rebinding page makes the reader's browser send requests to 127.0.0.1 with the attacker's own name in the
``Host`` header; those must get a 4xx. The machine's own addresses are checked against ``hostname -I`` (the
kernel's list, read by another program), not against the code under test.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess

import pytest
from checkpoints import save_checkpoint
from starlette.testclient import TestClient

from pipeline.cli import main
from pipeline.explore.app import create_app, running
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

IMGSZ = 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_images):
    root = tmp_path_factory.mktemp("hosts")
    ckpt = save_checkpoint(root / "best.pt", seed=3, imgsz=IMGSZ)
    photo = sample_images[0]
    return {"ckpt": ckpt, "photo": photo, "ex": Explorer(load_model(str(ckpt)), [photo], imgsz=IMGSZ)}


def own_ipv4_addresses() -> list[str]:
    """This machine's global IPv4 addresses as ``hostname -I`` lists them."""
    tool = shutil.which("hostname")
    if tool is None:
        pytest.skip("hostname (the command) is not installed")
    listed = subprocess.run([tool, "-I"], capture_output=True, text=True, check=True, timeout=30).stdout.split()
    return [a for a in listed if ":" not in a]


def ask(base: str, host_header: str, path: str = "/api/photos") -> tuple[int, bytes]:
    """GET ``path`` from the server at ``base`` (reached over loopback) with this Host header, as a browser
    would send it for a name that resolves to this machine."""
    address, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(address, int(port), timeout=60)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host_header)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


FORGED = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example",
          "192.168.1.1:{port}", "[::2]:{port}"]


def test_a_forged_host_is_refused_and_the_served_one_answered(setup):
    """Bound to loopback: the loopback names answer (with or without the port), any other name gets 400."""
    photos = f'[{{"index":0,"name":"{setup["photo"].name}"}}]'.encode()
    with running(setup["ex"]) as base:
        port = base.rsplit(":", 1)[1]
        for host in ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST:{port}", "[::1]:{port}"]:
            assert ask(base, host.format(port=port)) == (200, photos), host
        for host in FORGED:
            assert ask(base, host.format(port=port)) == (400, b"Invalid host header"), host
        assert ask(base, "evil.example", "/")[0] == 400  # the page too, not only the API


def test_every_interface_answers_the_machines_own_addresses_only(setup):
    addresses = own_ipv4_addresses()
    with running(setup["ex"], host="0.0.0.0") as base:
        assert base.startswith("http://127.0.0.1:")
        port = base.rsplit(":", 1)[1]
        for host in ["127.0.0.1", "localhost", *addresses, *(f"{a}:{port}" for a in addresses)]:
            assert ask(base, host.format(port=port))[0] == 200, host
        for host in FORGED:
            assert ask(base, host.format(port=port))[0] == 400, host


def test_an_app_given_its_hosts_checks_them_and_a_test_client_without_them_is_unchanged(setup):
    guarded = create_app(setup["ex"], ["127.0.0.1"])
    assert TestClient(guarded, base_url="http://127.0.0.1").get("/api/photos").status_code == 200
    assert TestClient(guarded).get("/api/photos").status_code == 400  # TestClient's Host is "testserver"
    assert TestClient(create_app(setup["ex"])).get("/api/photos").status_code == 200


def _announced(setup, monkeypatch, capsys, *host_args) -> tuple[int, list[str], dict]:
    """Run ``cardamage explore`` up to the point where it would serve, on a free port: the port, its stderr
    lines, and the socket and host it would serve."""
    seen = {}

    def fake_serve(explorer, sock, host=None, atlas=None):  # serve's signature: the command passes --atlas
        seen.update(sock=sock.getsockname(), host=host)
        sock.close()

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("pipeline.cli.explore.serve", fake_serve)
    rc = main(["explore", "--weights", str(setup["ckpt"]), str(setup["photo"]), "--no-browser", "--port", str(port),
               *host_args])
    assert rc == 0
    return port, capsys.readouterr().err.strip().splitlines(), seen


def test_every_interface_is_a_warning_and_the_real_addresses(setup, monkeypatch, capsys):
    port, lines, seen = _announced(setup, monkeypatch, capsys, "--host", "0.0.0.0")
    urls = [f"http://127.0.0.1:{port}/", *(f"http://{a}:{port}/" for a in own_ipv4_addresses())]
    assert lines == [
        f"warning: explore listens on every interface (0.0.0.0:{port}), not only on this machine: anyone who can "
        "reach it can read these photos and the model; the default --host 127.0.0.1 keeps it here",
        f"cardamage explore: 1 photo on {', '.join(urls)} (Ctrl+C stops)",
    ]
    assert seen == {"sock": ("0.0.0.0", port), "host": "0.0.0.0"}


def test_loopback_is_one_line_and_no_warning(setup, monkeypatch, capsys):
    port, lines, seen = _announced(setup, monkeypatch, capsys)
    assert lines == [f"cardamage explore: 1 photo on http://127.0.0.1:{port}/ (Ctrl+C stops)"]
    assert seen == {"sock": ("127.0.0.1", port), "host": "127.0.0.1"}


WILDCARD_HOSTS = ["0.0.0.0", "0.0.0.0:{port}", "0", "0:{port}", "[::]", "[::]:{port}", "[::ffff:0.0.0.0]"]


@pytest.mark.parametrize("bind", ["0.0.0.0", "0", ""])
def test_a_wildcard_bind_does_not_answer_its_wildcard_name(setup, bind):
    """A browser sends http://0.0.0.0:PORT/ (and http://0:PORT/) to this machine, so a page elsewhere could reach
    the explorer through that name: it gets 400; the real names still answer."""
    with running(setup["ex"], host=bind) as base:
        port = base.rsplit(":", 1)[1]
        for host in WILDCARD_HOSTS:
            assert ask(base, host.format(port=port)) == (400, b"Invalid host header"), (bind, host)
        for host in ["127.0.0.1", f"localhost:{port}", socket.gethostname(), *own_ipv4_addresses()]:
            assert ask(base, host)[0] == 200, (bind, host)


def test_served_hosts_never_names_a_wildcard_address():
    from pipeline.explore.app import listen, served_hosts

    binds = ["0.0.0.0", "0", ""] + (["::"] if socket.has_ipv6 else [])
    for bind in binds:
        try:
            sock = listen(bind, 0)
        except OSError:  # no IPv6 on this machine
            assert bind == "::"
            continue
        with sock:
            hosts = served_hosts(sock, bind)
        assert not {"0.0.0.0", "0", "", "[::]", "::"} & set(hosts), (bind, hosts)
        assert {"127.0.0.1", "localhost", socket.gethostname().lower()} <= set(hosts), (bind, hosts)


@pytest.mark.parametrize("host", ["::ffff:0.0.0.0", "::ffff:127.0.0.1"])
def test_an_ipv4_mapped_host_prints_only_addresses_that_answer(host):
    """``--host ::ffff:0.0.0.0`` bound an IPv6 socket that takes IPv4 only, yet printed the machine's IPv6
    addresses, where nothing answered. It is bound as the IPv4 address it maps, and prints IPv4 addresses only:
    loopback and the machine's own as ``hostname -I`` lists them (connecting to those is off-limits in tests)."""
    from urllib.parse import urlsplit

    from pipeline.explore.app import listen, served_urls

    sock = listen(host, 0)
    try:
        assert sock.family == socket.AF_INET
        urls = served_urls(sock, host)
        assert urls and {urlsplit(u).hostname for u in urls} <= {"127.0.0.1", *own_ipv4_addresses()}, urls
    finally:
        sock.close()
