"""Test-wide fixtures: a network guard that proves zero network attempts, and the real CarDD sample.

The guard replaces DNS lookups and socket connects for the whole session: any lookup of a name other
than localhost, or a connection to a non-loopback address, fails the test that made it. Ultralytics
is imported after ``pipeline`` so it sees the offline environment.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (offline environment before ultralytics)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = (REPO.parent / "shared" / "data" / "cardd-sample").resolve()

NETWORK_ATTEMPTS: list[str] = []
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "127.0.0.1", "::1", "", None}


def _is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in _LOCAL_NAMES


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        NETWORK_ATTEMPTS.append(f"DNS lookup of {host!r}")
        raise OSError(f"network guard: DNS lookup of {host!r} refused in tests")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check_address(address):
    if isinstance(address, tuple) and address and not _is_loopback(address[0]):
        NETWORK_ATTEMPTS.append(f"connect to {address!r}")
        raise OSError(f"network guard: connection to {address!r} refused in tests")


def _guarded_connect(self, address):
    _check_address(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(address)
    return _real_connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(autouse=True)
def _no_network_attempts():
    """Fail any test during which something tried the network (even if the caller swallowed the error)."""
    start = len(NETWORK_ATTEMPTS)
    yield
    new = NETWORK_ATTEMPTS[start:]
    assert not new, f"network attempted: {new}"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 100 real CarDD photos in ../shared (never copied into the repo). Required under CI=true."""
    if not (SAMPLE / "data.yaml").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SAMPLE} is missing: CI must run with ../shared beside the clone")
        pytest.skip(f"{SAMPLE} not found")
    return SAMPLE


@pytest.fixture(scope="session")
def sample_images(sample_dir) -> list[Path]:
    return sorted((sample_dir / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic dataset (24 train / 8 val images at 160 px) drawn by pipeline.data.synth; returns data.yaml."""
    from pipeline.data.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth"), n_train=24, n_val=8, imgsz=160, seed=0, progress=False)


@pytest.fixture(scope="session")
def trained_weights(synth_data, tmp_path_factory) -> Path:
    """A real Ultralytics checkpoint: yolov8n.yaml trained for one short epoch on synthetic data (CPU, ~20 s)."""
    from pipeline.model.train import train

    out = tmp_path_factory.mktemp("train") / "run"
    train(synth_data, out, epochs=1, imgsz=160, batch=8, nbs=8, workers=0, device="cpu", val=True, seed=0)
    return out / "weights" / "best.pt"
