"""Start or join a Ray cluster without touching the network, and split the photo list into chunks.

``ray_session`` starts a local instance (no dashboard, usage reporting off; Ray 2.60's servers
listen on every interface, behind its token authentication: docs/scale.md) or joins the
cluster at an address, and reuses one already started in this process (the tests start one per module).
Ray is imported only here and only when a session starts, so ``cardamage`` runs without it installed.

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
    try:
        if address == LOCAL:
            # "local": a new instance even if RAY_ADDRESS names another. No node address is given: Ray 2.60
            # turns 127.0.0.1 into the machine's reachable address anyway (services.resolve_ip_for_localhost)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"--ray {address}", f"cannot start or join Ray ({' '.join(str(e).split())[:200]})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


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
