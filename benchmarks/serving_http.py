"""The HTTP side of ``benchmarks/serving.py``: lorafleet's Ray Serve app on loopback.

A local Ray head (the one ``lorafleet up`` starts, token auth on) serves the base model with
the same adapters through the serve config the operator would write
(:func:`lorafleet_operator.serveconfig.build_serve_config`), deployed through the dashboard's
REST API as KubeRay does. The same workload the in-process runs use is sent with ``httpx``
(``/v1/completions``), ``concurrency`` requests in flight; streamed requests measure the time
to the first token (the first SSE event carrying text). ``set_max_adapters`` changes only the
``Model`` deployment's ``user_config``, applied in place by ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
from lorafleet_operator.models import BaseModelSpec
from lorafleet_operator.serveconfig import MODEL_DEPLOYMENT, build_serve_config

from tests.support.ray_cluster import deploy_serve_config, start_ray_cluster

APP = "bench"


class HttpRuns:
    """The app on a local Ray head, and timed workloads through its HTTP proxy.

    Args:
        base: The base model folder.
        adapters: Adapter name -> folder (all registered).
        batch_size: ``maxBatchSize`` of the Model deployment.
        max_adapters: ``maxAdaptersPerReplica`` (adapter places per replica).
        max_tokens_limit: ``maxTokensLimit``.
    """

    def __init__(
        self,
        base: Path,
        adapters: dict[str, Path],
        *,
        batch_size: int,
        max_adapters: int,
        max_tokens_limit: int = 256,
    ) -> None:
        self.cluster = start_ray_cluster(num_cpus=2)
        spec = BaseModelSpec.model_validate(
            {
                "source": {"uri": f"file://{base}"},
                "task": "text-generation",
                "serving": {
                    "gpus": 0,
                    "maxAdaptersPerReplica": max_adapters,
                    "maxBatchSize": batch_size,
                    "batchWaitTimeoutMs": 5,
                    "maxTokensLimit": max_tokens_limit,
                },
            }
        )
        registry = {n: {"path": str(p)} for n, p in adapters.items()}
        self.config = build_serve_config(APP, str(base), spec, registry, num_cpus=1, num_gpus=0)
        self.url = f"{self.cluster.http_url}/v1/completions"
        self._deploy()

    def _deploy(self) -> None:
        deploy_serve_config(
            self.cluster.dashboard_url, self.config, timeout=600, token=self.cluster.token
        )

    def set_max_adapters(self, count: int) -> None:
        """Change the adapter places per replica in place (``user_config`` only)."""
        for deployment in self.config["applications"][0]["deployments"]:
            if deployment["name"] == MODEL_DEPLOYMENT:
                deployment["user_config"]["max_adapters"] = count
        self._deploy()

    def stop(self) -> None:
        """Stop the Ray head this object started."""
        self.cluster.stop()

    async def run(
        self, prompts: list[str], names: list[str | None], max_tokens: int, concurrency: int
    ) -> tuple[float, int]:
        """Send every request, ``concurrency`` in flight; (seconds, generated tokens).

        Raises:
            RuntimeError: A request was not answered 200.
        """
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=600) as client:

            async def one(prompt: str, name: str | None) -> int:
                async with limit:
                    resp = await client.post(self.url, json=_body(prompt, name, max_tokens))
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:500]}")
                return int(resp.json()["usage"]["completion_tokens"])

            t0 = time.perf_counter()
            tokens = await asyncio.gather(*[one(p, n) for p, n in zip(prompts, names, strict=True)])
            return time.perf_counter() - t0, sum(tokens)

    async def first_tokens(
        self, prompts: list[str], names: list[str | None], max_tokens: int, concurrency: int
    ) -> list[float]:
        """Streamed requests, ``concurrency`` in flight: seconds to each one's first token."""
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=600) as client:

            async def one(prompt: str, name: str | None) -> float:
                body = {**_body(prompt, name, max_tokens), "stream": True}
                async with limit:
                    t0 = time.perf_counter()
                    first = None
                    async with client.stream("POST", self.url, json=body) as resp:
                        if resp.status_code != 200:
                            raise RuntimeError(f"HTTP {resp.status_code}")
                        async for line in resp.aiter_lines():
                            if first is None and _has_text(line):
                                first = time.perf_counter() - t0
                    if first is None:
                        raise RuntimeError("a streamed response carried no text")
                    return first

            return list(
                await asyncio.gather(*[one(p, n) for p, n in zip(prompts, names, strict=True)])
            )


def _body(prompt: str, name: str | None, max_tokens: int) -> dict[str, Any]:
    return {"model": name or APP, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}


def _has_text(line: str) -> bool:
    """Whether an SSE line is a completion chunk with text."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    choices = json.loads(line[len("data: ") :]).get("choices") or []
    return any(c.get("text") for c in choices)
