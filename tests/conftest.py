"""Root pytest configuration: shared fixtures live in ``tests/support/`` plugin modules.

- ``tests.support.models``: tiny models, tokenizers and peft adapters made on the fly.
- ``tests.support.hub``: an offline Hugging Face Hub (olah) and S3 (moto) on loopback.
- ``tests.support.ray_cluster``: one local Ray cluster + Serve per test session.
- ``tests.support.kube``: the Go-built Kubernetes cluster with its real node, namespaces.
- ``tests.support.pod_servers``: a Hub mirror and S3 on the node's address, hostPath volumes.
"""

pytest_plugins = [
    "tests.support.models",
    "tests.support.hub",
    "tests.support.ray_cluster",
    "tests.support.kube",
    "tests.support.pod_servers",
]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``node_teardown`` take the session's cluster down: they run last."""
    last = [item for item in items if item.get_closest_marker("node_teardown")]
    items[:] = [item for item in items if item not in last] + last
