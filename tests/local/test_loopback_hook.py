"""The worker setup hook that keeps a local Ray's Python gRPC servers on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lorafleet_serving.loopback import loopback_address


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("[::]:0", "127.0.0.1:0"),
        ("0.0.0.0:8000", "127.0.0.1:8000"),
        (":9000", "127.0.0.1:9000"),
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("192.0.2.2:50051", "192.0.2.2:50051"),
        ("[::1]:7", "[::1]:7"),
        ("[fd00::2]:7", "[fd00::2]:7"),
    ],
)
def test_only_wildcards_move_to_loopback(address: str, expected: str) -> None:
    assert loopback_address(address) == expected


def test_hook_makes_a_wildcard_grpc_server_listen_on_loopback_only() -> None:
    # In a fresh interpreter, as in a Ray worker: the hook runs, then a server binds "[::]:0"
    # through the helper Serve's replicas use; the kernel says where it listens.
    code = """
import grpc, psutil, os
from concurrent import futures
from lorafleet_serving.loopback import keep_grpc_on_loopback
keep_grpc_on_loopback()
keep_grpc_on_loopback()  # idempotent
from ray._common.tls_utils import add_port_to_grpc_server
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
port = add_port_to_grpc_server(server, "[::]:0")
server.start()
addrs = {c.laddr.ip for c in psutil.Process().connections("tcp")
         if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
print(sorted(addrs))
server.stop(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # gRPC binds IPv4 addresses on an IPv6 socket: ::ffff:127.0.0.1 is 127.0.0.1.
    assert out.stdout.strip() in ("['127.0.0.1']", "['::ffff:127.0.0.1']"), out.stdout
