"""Connect to Ray: start a local runtime on the loopback interface, or join an existing cluster.

Addresses: `ray` starts a local runtime that listens on 127.0.0.1 only (or uses the runtime this
process already has); `ray:auto` joins the cluster this machine belongs to; `ray://HOST:PORT`
joins through the Ray Client; `ray:HOST:PORT` joins as a driver on a cluster node (GCS address).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InputError, VsrkitError

LOOPBACK = "127.0.0.1"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Segments travel through files, not Ray's object store; a small store keeps the local runtime light."""
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}
"""Ray lowers its worker processes to niceness 15 by default, below its own background processes and the
driver, so on a busy machine every wake-up of those preempts the workers that do the run's work. In a
runtime vsrkit starts, the workers keep the command's own priority (Ray's `worker_niceness`, given to
ray.init for this runtime only); a cluster vsrkit joins keeps its own settings."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise VsrkitError("running on a cluster needs Ray: pip install 'vsrkit[cluster]' (or pip install ray)") from exc
    return ray


def parse_address(address: str) -> str:
    """'local' or the address to hand to ray.init, from what the user gave."""
    text = (address or "").strip()
    if text in ("ray", "local"):
        return "local"
    if text == "ray:auto":
        return "auto"
    if text.startswith("ray://"):
        return text
    if text.startswith("ray:") and ":" in text[4:]:
        return text[4:]
    raise InputError(f"cluster address {address!r} is not one vsrkit knows; use ray (a local runtime), ray:auto, "
                     "ray://HOST:PORT (Ray Client) or ray:HOST:PORT (a cluster's GCS address)")


def _is_loopback(target: str) -> bool:
    host = target.removeprefix("ray://").rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextmanager
def _loopback_node(ray: Any) -> Iterator[None]:
    """Keep this node on 127.0.0.1: Ray replaces a loopback node address by the machine's outward
    one unless its cluster switch is off, and that switch is read at ray.init only."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextmanager
def ray_session(address: str = "ray", num_cpus: int | None = None) -> Iterator[Any]:
    """The ray module, connected for the duration of the block.

    A runtime this process already has is used as it is and left running; one started or joined
    here is shut down (or left) at the end.
    """
    ray = import_ray()
    target = parse_address(address)
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": True}
    if target == "local":
        options.update(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES, num_cpus=num_cpus,
                       _system_config=dict(LOCAL_SYSTEM_CONFIG))
        loopback = True
    else:
        options["address"] = target
        loopback = _is_loopback(target)
        if loopback and not target.startswith("ray://"):
            options["_node_ip_address"] = LOOPBACK
    try:
        if loopback:
            with _loopback_node(ray):
                ray.init(**options)
        else:
            ray.init(**options)
    except ConnectionError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r} ({exc}); start it (ray start --head) "
                         "or check the address") from exc
    try:
        yield ray
    finally:
        ray.shutdown()
