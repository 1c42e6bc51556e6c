"""A tiny Ray Serve application for the KubeRay stand-in tests: it answers every request
with the ``args`` it was built with and the ``user_config`` its replica last received."""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Echo:
    """Replies ``{"args": ..., "user_config": ...}`` to any HTTP request."""

    def __init__(self, args: dict[str, Any]):
        self.args = args
        self.user_config: dict[str, Any] | None = None

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Receive ``user_config`` (Serve calls this in place on every replica)."""
        self.user_config = config

    async def __call__(self, request: Any) -> dict[str, Any]:
        return {"args": self.args, "user_config": self.user_config}


def build(args: dict[str, Any]) -> Any:
    """Application builder: ``import_path: tests.k8s.echo_app:build``.

    Args:
        args: the application's ``args`` from the serve config.

    Returns:
        The bound application.
    """
    return Echo.bind(args)
