"""Start or join a Ray cluster without touching the network, and split the photo list into chunks.

``ray_session`` starts a local instance or joins the cluster at an address, and reuses one already started
in this process (the tests start one per module). A local instance is held to this machine
(``local_only``): every Ray server listens on 127.0.0.1, usage reporting is off, and no dashboard process
starts, so nothing is sent out (``tests/test_offline_native.py`` checks both under strace and in the socket
table). Ray is imported only here and only when a session starts, so ``cardamage`` runs without it installed.

Every worker reads the photos by their absolute paths and writes overlays into the output folder, so on a
cluster both must lie on a filesystem every machine mounts at the same path (NFS, a cloud file share).

Examples:
    >>> with ray_session("local", num_cpus=2) as ray:
    ...     ray.cluster_resources()["CPU"]
    2.0
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from pipeline.core.io import InputError

#: What ``--ray`` means without an address: start a Ray instance on this machine for this run only.
LOCAL = "local"

#: Photos per task sent to a worker, and per shard file written when it comes back.
CHUNK = 8


def import_ray():
    """Ray itself, or one line saying how to install it (it is the optional ``scale`` extra).

    Examples:
        >>> ray = import_ray()
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray reads it: nothing is reported home
    try:
        import ray
    except ImportError:
        raise InputError("--ray", "Ray is not installed: pip install -e '.[scale]' (ray[data])") from None
    return ray


#: The environment a local instance starts its processes with (they copy it; workers inherit the raylet's).
#: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is the local-only mode Ray runs in on macOS and Windows: the node
#: address stays 127.0.0.1 (Linux otherwise replaces it by the machine's address, found by a UDP "connect" to
#: 8.8.8.8) and the servers bind it instead of "::". Usage reporting is off, whatever the caller's environment says.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _skip_api_server(node, **_) -> None:
    """Stands in for ``ray._private.node.Node.start_api_server`` while a local instance starts: no process.

    With ``include_dashboard=False`` Ray 2.60 still starts ``dashboard.py``, loading only its usage-stats module,
    whose first act, before it reads ``RAY_USAGE_STATS_ENABLED``, is to ask 169.254.169.254 and
    metadata.google.internal which cloud it runs on. A local run uses nothing else of that process.
    """


@contextlib.contextmanager
def local_only(ray) -> Iterator[None]:
    """While ``ray.init`` starts a local instance: loopback node address, usage reporting off, no dashboard.

    Everything is put back afterwards, so a later ``--ray ADDRESS`` in the same process joins a cluster as usual.
    Ray's private module layout is checked first: if a Ray release moved what this relies on, the run is refused
    (one line) rather than started on every interface.
    """
    private = getattr(ray, "_private", None)
    constants = getattr(private, "ray_constants", None)
    node = getattr(getattr(private, "node", None), "Node", None)
    if not hasattr(constants, "ENABLE_RAY_CLUSTER") or not hasattr(node, "start_api_server"):
        raise InputError("--ray", f"Ray {ray.__version__} cannot be held to loopback by this cardamage (ray._private "
                                  "changed); start Ray yourself and pass its address, or run without --ray")
    saved_env = {k: os.environ.get(k) for k in LOCAL_ONLY_ENV}
    saved_cluster, saved_api = constants.ENABLE_RAY_CLUSTER, node.start_api_server
    os.environ.update(LOCAL_ONLY_ENV)
    constants.ENABLE_RAY_CLUSTER = False  # this process read the variable when it imported Ray
    node.start_api_server = _skip_api_server
    try:
        yield
    finally:
        node.start_api_server = saved_api
        constants.ENABLE_RAY_CLUSTER = saved_cluster
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(address: str = LOCAL, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator:
    """Yield the ``ray`` module connected to a cluster; shut it down afterwards if this call started it.

    Args:
        address: ``"local"`` starts an instance on this machine; anything else
            (``"auto"``, ``"10.0.0.5:6379"``, ``"ray://head:10001"``) joins that cluster.
        num_cpus, num_gpus: resources of a local instance (default: what Ray detects).

    Examples:
        >>> with ray_session() as ray:
        ...     print(ray.cluster_resources())
    """
    ray = import_ray()
    if ray.is_initialized():  # a caller (a test module, a notebook) already holds a session: use it
        yield ray
        return
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    # a local instance keeps its sockets, logs and spilled objects in a folder of its own, removed when it stops
    # (Ray's default, /tmp/ray/session_*, stays behind after every run)
    temp = tempfile.mkdtemp(prefix="cardamage-ray-") if address == LOCAL else None
    try:
        try:
            if address == LOCAL:
                # "local": a new instance even if RAY_ADDRESS names another
                with local_only(ray):
                    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, num_gpus=num_gpus,
                             _temp_dir=temp, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"--ray {address}", f"cannot start or join Ray ({' '.join(str(e).split())[:200]})") from None
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def chunks(items: list, workers: int = 1, size: int = CHUNK) -> list[list]:
    """``items`` in consecutive pieces of at most ``size``, small enough that each worker gets two or more.

    Examples:
        >>> chunks(list(range(10)), workers=2)
        [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    """
    size = max(1, min(size, -(-len(items) // (2 * max(1, workers)))))
    return [items[i:i + size] for i in range(0, len(items), size)]


def default_workers(ray, gpus_per_worker: float, cpus_per_worker: float = 1) -> int:
    """Workers that fit the cluster now: by GPUs when each worker takes some, else by CPUs.

    Examples:
        >>> default_workers(ray, gpus_per_worker=0.5)  # a cluster with 4 GPUs
        8
    """
    res = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(res.get("GPU", 0) // gpus_per_worker))
    return max(1, int(res.get("CPU", 1) // cpus_per_worker))


def run_pool(ray, actors: list, method: str, tasks: list, on_result) -> None:
    """Send ``tasks`` to ``actors`` (each keeps two in flight) and call ``on_result(i, result)`` as each ends.

    Results arrive in completion order; ``i`` is the task's position in ``tasks``. A worker that dies takes
    the run down with it, as one ``InputError`` line: a resumed run redoes only unfinished work.

    Examples:
        >>> run_pool(ray, actors, "predict", [[(0, "/data/a.jpg", None)]], lambda i, result: print(i, result))
    """
    todo = list(enumerate(tasks))[::-1]
    inflight: dict = {}

    def submit(actor) -> None:
        if todo:
            i, task = todo.pop()
            inflight[getattr(actor, method).remote(task)] = (i, actor)

    for actor in actors:
        for _ in range(2):  # one running, one queued: no worker waits for the driver
            submit(actor)
    while inflight:
        ready, _ = ray.wait(list(inflight), num_returns=1)
        i, actor = inflight.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayError as e:  # one line, not a remote traceback; the shards written so far stay
            cause = getattr(e, "cause", None)
            if isinstance(cause, InputError):  # e.g. an overlay the worker could not write
                raise cause from None
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise InputError("--ray", f"a worker failed ({first.strip()[:200]}); run the same command again to "
                                      "resume from the shards written so far") from None
        on_result(i, result)
        submit(actor)
