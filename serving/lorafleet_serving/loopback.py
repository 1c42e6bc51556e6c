"""Keep a local Ray's Python gRPC servers on 127.0.0.1 (a Ray worker setup hook for local mode).

Ray 2.60 binds most servers to the node address (127.0.0.1 in local mode), but a Serve
replica's inter-deployment gRPC server is hard-coded to every interface:
``add_port_to_grpc_server(self._server, "[::]:0")`` in ``ray/serve/_private/replica.py``. It
checks the Ray token, yet it is reachable from the network, which local mode promises not to be.

:func:`keep_grpc_on_loopback` is run by every Python worker of the Ray head that ``lorafleet
up`` starts, before any task or actor (``lorafleet_operator.local.ray_head`` names it in the
worker setup-hook variable that Ray's ``default_worker.py`` reads at start-up). It wraps
``ray._common.tls_utils.add_port_to_grpc_server`` -- the helper every Python gRPC server of Ray
binds through -- so that a wildcard address (``[::]``, ``0.0.0.0``) becomes ``127.0.0.1`` with
the same port. Handles reach replicas at the node address, which is 127.0.0.1 here. Other
addresses pass unchanged. It never raises: a worker whose hook fails is stopped by Ray.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

#: Hosts that mean "every interface" in a gRPC listen address.
WILDCARD_HOSTS = ("[::]", "::", "0.0.0.0", "")
#: Where a wildcard listener is moved.
LOOPBACK_HOST = "127.0.0.1"
#: Module path of the hook (``module.function``), for Ray's worker setup-hook variable.
HOOK = "lorafleet_serving.loopback.keep_grpc_on_loopback"
_WRAPPED = "_lorafleet_loopback"


def loopback_address(address: str) -> str:
    """Turn a wildcard gRPC listen address into the same port on 127.0.0.1.

    Args:
        address: ``host:port`` as given to ``grpc.Server.add_insecure_port`` (IPv6 hosts in
            brackets).

    Returns:
        ``127.0.0.1:<port>`` when the host is a wildcard, else ``address`` unchanged.
    """
    host, sep, port = address.rpartition(":")
    if sep and host in WILDCARD_HOSTS:
        return f"{LOOPBACK_HOST}:{port}"
    return address


def keep_grpc_on_loopback() -> None:
    """Ray worker setup hook: bind Ray's Python gRPC servers to 127.0.0.1, not every interface.

    Idempotent; a failure is logged, never raised (see the module docstring).
    """
    try:
        from ray._common import tls_utils

        original = tls_utils.add_port_to_grpc_server
        if getattr(original, _WRAPPED, False):
            return

        def add_port_to_grpc_server(server: Any, address: str) -> int:
            return original(server, loopback_address(address))

        setattr(add_port_to_grpc_server, _WRAPPED, True)
        tls_utils.add_port_to_grpc_server = add_port_to_grpc_server
        # Modules that imported the helper by name before the hook ran.
        for name in ("ray.serve._private.replica", "ray.util.client.server.server"):
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "add_port_to_grpc_server"):
                module.add_port_to_grpc_server = add_port_to_grpc_server
    except Exception:  # pragma: no cover - Ray changed; the listener test in tests/local fails
        logger.warning("could not keep Ray's gRPC servers on loopback", exc_info=True)
