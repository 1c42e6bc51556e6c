"""Root pytest configuration: shared fixtures live in ``tests/support/`` plugin modules.

- ``tests.support.models``: tiny models, tokenizers and peft adapters made on the fly.
- ``tests.support.hub``: an offline Hugging Face Hub (olah) and S3 (moto) on loopback.
- ``tests.support.ray_cluster``: one local Ray cluster + Serve per test session.
- ``tests.support.kube``: the Go-built Kubernetes control plane, namespaces, stand-ins.
"""

pytest_plugins = [
    "tests.support.models",
    "tests.support.hub",
    "tests.support.ray_cluster",
    "tests.support.kube",
]
