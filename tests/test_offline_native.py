"""No command talks to the network, native code included: real commands under ``strace -f``.

``tests/conftest.py`` guards Python's ``socket`` module, which never sees what a shared library or a child
process does (ONNX Runtime's telemetry uploader is C++; Ray's servers are C++ binaries and other Pythons).
Here each command runs as its own process tree under ``strace -f -e trace=network,openat``, and every
``connect``/``sendto``/``sendmsg``/``bind`` to an address that is not loopback, and anything sent to port 53
(DNS, on any address: a local resolver forwards it), fails the test. ONNX Runtime's telemetry store being
opened fails it too: its uploader sends what it stored about 9 s after the library loads (measured), from
whichever process lives that long, so a short run is no proof by itself.

strace is required under ``CI=true`` (``.ci/run`` installs it); elsewhere the tests skip without it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from checkpoints import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
IMGSZ = 160
#: ONNX Runtime 1.32's telemetry store (SQLite, under ~/.cache); opening it means its uploader is armed.
ORT_TELEMETRY_STORE = "DeveloperTools/.onnxruntime"
#: Seconds a process keeps ONNX Runtime loaded in the upload test: its uploader first sent ~9.0 s after the
#: library loaded, in each of 5 runs here (strace timestamps, 2026-12-07).
ORT_LINGER_S = 15

_SYSCALL = re.compile(r"\b(connect|bind|sendto|sendmsg|sendmmsg)\(")
_INET4 = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 (Python 3.11)
        ip = ip.ipv4_mapped
    return ip.is_loopback


def network_findings(trace: str) -> list[str]:
    """The lines of an ``strace -f`` log that reach beyond this machine, or bind beyond loopback, or do DNS."""
    bad = []
    for line in trace.splitlines():
        if not _SYSCALL.search(line):
            continue
        for port, host in _INET4.findall(line) + _INET6.findall(line):
            if int(port) == 53 or not _loopback(host):
                bad.append(line.strip()[:200])
    return bad


def telemetry_findings(trace: str) -> list[str]:
    """The lines of an ``strace`` log in which ONNX Runtime opened its telemetry store."""
    return [line.strip()[:200] for line in trace.splitlines() if "openat(" in line and ORT_TELEMETRY_STORE in line]


def test_the_parser_sees_what_it_must():
    """The oracle itself: lines copied from real strace logs of today's (unfixed) runs, and loopback ones."""
    leaks = [
        '8199  connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '10589 connect(23, {sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("169.254.169.254")}, 16) = -1',
        '10462 connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("8.8.8.8")}, 16) = 0',
        '10556 bind(44, {sa_family=AF_INET6, sin6_port=htons(0), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '11 connect(16, {sa_family=AF_INET6, sin6_port=htons(45315), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::ffff:192.0.2.2", &sin6_addr), sin6_scope_id=0}, 28) = -1 EINPROGRESS',
        '12 sendto(3, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 1',
    ]
    fine = [
        '12 connect(5, {sa_family=AF_INET, sin_port=htons(41000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '12 bind(5, {sa_family=AF_INET6, sin6_port=htons(0), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::ffff:127.0.0.1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '12 connect(4, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '12 recvfrom(8, "x", 1024, 0, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.1")}, [16])',
    ]
    assert network_findings("\n".join(leaks + fine)) == [line[:200] for line in leaks]
    store = '7 openat(AT_FDCWD, "/root/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db", O_RDWR) = 4'
    assert telemetry_findings(store + "\n" + fine[0]) == [store]


# ------------------------------------------------------------------------------------------------ running


@pytest.fixture(scope="session")
def strace() -> str:
    """The strace binary, checked to work here (ptrace may be forbidden in a container)."""
    path = shutil.which("strace")
    problem = None if path else "strace is not installed (apt-get install strace)"
    if path:
        probe = subprocess.run([path, "-f", "-qq", "-e", "trace=network", "-o", os.devnull, "true"],
                               capture_output=True, text=True, timeout=60)
        problem = None if probe.returncode == 0 else f"strace does not run here: {probe.stderr.strip()[:200]}"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{problem}: CI must run the native network tests")
        pytest.skip(problem)
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _traced(strace: str, log: Path, args: list[str]) -> list[str]:
    return [strace, "-f", "-qq", "-e", "trace=network,openat", "-e", "signal=none", "-o", str(log), *args]


def run_traced(strace: str, log: Path, args: list[str],
               timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``args`` (and every process it starts) under strace; its result and the whole log."""
    done = subprocess.run(_traced(strace, log, args), capture_output=True, text=True, env=_env(), timeout=timeout)
    return done, log.read_text(errors="replace")


def assert_offline(trace: str) -> None:
    net, store = network_findings(trace), telemetry_findings(trace)
    assert not net, "network traffic beyond loopback:\n" + "\n".join(net[:20])
    assert not store, "ONNX Runtime's telemetry is on (its store was opened):\n" + "\n".join(store[:5])


CLI = [sys.executable, "-m", "pipeline"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("w") / "w.pt", imgsz=IMGSZ)


@pytest.fixture(scope="module")
def photos(sample_images, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for p in sample_images[:4]:
        shutil.copy(p, folder / p.name)
    return folder


# ------------------------------------------------------------------------------------------------ commands


def test_predict_with_the_onnx_engine_sends_nothing(strace, weights, photos, tmp_path):
    out = tmp_path / "out"
    done, trace = run_traced(strace, tmp_path / "trace.txt", [
        *CLI, "predict", str(photos), "--weights", str(weights), "--out", str(out), "--backend", "onnx",
        "--imgsz", str(IMGSZ), "--no-overlays"])
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((out / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted(p.name for p in photos.iterdir())
    assert "(onnx" in done.stdout + done.stderr  # the ONNX Runtime engine ran, not stock predict
    assert_offline(trace)


@pytest.mark.slow
def test_onnx_runtime_uploads_nothing_while_it_stays_loaded(strace, weights, tmp_path):
    """The engine's ONNX Runtime backend, kept loaded past the uploader's first send (~9 s in)."""
    code = (
        "import sys, time, torch\n"
        "import pipeline\n"
        "from pipeline.model.backends import OnnxBackend\n"
        "from pipeline.model.load import load_model\n"
        "backend = OnnxBackend(load_model(sys.argv[1]).model, threads=1, cache=False)\n"
        "y, logits = backend.forward(torch.zeros(1, 3, int(sys.argv[2]), int(sys.argv[2])))\n"
        "print(tuple(y.shape), tuple(logits.shape), flush=True)\n"
        "time.sleep(float(sys.argv[3]))\n"
    )
    done, trace = run_traced(strace, tmp_path / "trace.txt",
                             [sys.executable, "-c", code, str(weights), str(IMGSZ), str(ORT_LINGER_S)])
    assert done.returncode == 0, done.stderr[-2000:]
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # one per cell of YOLOv8's three output grids
    assert done.stdout.split("\n")[0] == f"{(1, 4 + 6, anchors)} {(1, 6, anchors)}"
    assert_offline(trace)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_explore_startup_and_a_request_send_nothing(strace, weights, photos, tmp_path):
    import psutil

    photo = sorted(photos.iterdir())[0]
    port = _free_port()
    log = tmp_path / "trace.txt"
    proc = subprocess.Popen(_traced(strace, log, [*CLI, "explore", "--weights", str(weights), str(photo), "--port",
                                                  str(port), "--no-browser", "--imgsz", str(IMGSZ)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        said = []
        for line in proc.stderr:  # the "on http://..." line comes once the port is bound
            said.append(line)
            if line.startswith("cardamage explore:"):
                break
        assert said and f"127.0.0.1:{port}/" in said[-1], "".join(said)[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/photos", timeout=60) as r:
            assert json.loads(r.read()) == [{"index": 0, "name": photo.name}]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/summary?photo=0", timeout=120) as r:
            assert r.status == 200 and json.loads(r.read())
    finally:
        for child in psutil.Process(proc.pid).children():  # the explorer: Ctrl+C, as a user stops it
            child.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert_offline(log.read_text(errors="replace"))


def test_report_sends_nothing(strace, weights, photos, tmp_path):
    photo = sorted(photos.iterdir())[0]
    out = tmp_path / "report"
    done, trace = run_traced(strace, tmp_path / "trace.txt", [
        *CLI, "report", str(photo), "--weights", str(weights), "--out", str(out), "--imgsz", str(IMGSZ),
        "--grad-imgsz", str(IMGSZ), "--grad-batch", "1", "--no-layercam"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert photo.name in (out / "report.html").read_text()
    assert_offline(trace)


# ------------------------------------------------------------------------------------------------ Ray


def _listeners(root_pid: int) -> set[tuple]:
    """Listening TCP sockets and bound UDP sockets of a process and its descendants: (name, ip, port, kind)."""
    import psutil

    found = set()
    try:
        procs = [psutil.Process(root_pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return found
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr and not c.raddr):
                    found.add((name, c.laddr.ip, c.laddr.port, "tcp" if c.type == socket.SOCK_STREAM else "udp"))
        except psutil.Error:  # the process ended between the listing and the look
            continue
    return found


@pytest.fixture(scope="module")
def ray_run(strace, weights, photos, tmp_path_factory) -> dict:
    """``predict --ray`` (a local instance) under strace, its process tree's sockets listed every 0.2 s."""
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("ray")
    log, out = tmp / "trace.txt", tmp / "out"
    with open(tmp / "stderr.txt", "w") as err:  # a file, not a pipe: nobody reads while the run lasts
        proc = subprocess.Popen(_traced(strace, log, [*CLI, "predict", str(photos), "--weights", str(weights),
                                                      "--out", str(out), "--imgsz", str(IMGSZ), "--no-overlays",
                                                      "--ray", "--workers", "1"]),
                                stdout=subprocess.DEVNULL, stderr=err, env=_env())
    listeners: set[tuple] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        listeners |= _listeners(proc.pid)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    return {"rc": proc.returncode, "stderr": (tmp / "stderr.txt").read_text(), "out": out,
            "trace": log.read_text(errors="replace"),
            "listeners": listeners}


@pytest.mark.slow
def test_predict_on_a_local_ray_instance_sends_nothing(ray_run, photos):
    assert ray_run["rc"] == 0, ray_run["stderr"][-2000:]
    records = json.loads((ray_run["out"] / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted(p.name for p in photos.iterdir())
    assert_offline(ray_run["trace"])


@pytest.mark.slow
def test_a_local_ray_instance_listens_on_loopback_only(ray_run):
    """Every socket Ray's processes listen on during the run (GCS, raylet, agents, workers, driver) is loopback."""
    assert ray_run["rc"] == 0, ray_run["stderr"][-2000:]
    names = {name for name, *_ in ray_run["listeners"]}
    assert {"gcs_server", "raylet"} <= names, ray_run["listeners"]  # the listing did see Ray's servers
    exposed = sorted(entry for entry in ray_run["listeners"] if not _loopback(entry[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_a_local_ray_instance_leaves_no_session_behind(ray_run):
    """Every local ``--ray`` run left a session folder in /tmp/ray (logs of each of Ray's processes). The instance
    keeps its files in a folder of its own, removed when it stops: strace's log shows every file opened."""
    assert ray_run["rc"] == 0, ray_run["stderr"][-2000:]
    opened = re.findall(r'openat\([^,]+, "([^"]+)"', ray_run["trace"])
    assert not [p for p in opened if p.startswith("/tmp/ray/")]
    own = {Path(*Path(p).parts[:3]) for p in opened if p.startswith(tempfile.gettempdir() + "/cardamage-ray-")}
    assert own and not any(folder.exists() for folder in own), own
