"""The Ray Serve application: ``Ingress`` (FastAPI, OpenAI-style API) -> ``Model`` (one base model).

``build_app(args)`` is the ``import_path`` target of the serve config
(``lorafleet_serving.ray_app:build_app``; ``args`` as in ``docs/interfaces.md`` section 3). This
is the composition root: it builds the model server over the transformers engine
(:func:`~.server.factory.build_model_server`) and the HTTP app over a Ray backend.

- ``Model`` holds one :class:`~.server.model_server.ModelServer` (base model, adapter cache, mixed
  batches). Adapter residency is announced to Serve with ``@serve.multiplexed``: its loader
  calls :meth:`ModelServer.ensure_adapter` and returns a small token. Serve pushes the loaded
  ids to its routers so requests for an adapter go to replicas that already hold it. One
  eviction policy: the adapter cache's, which knows which adapters running requests pin (its
  capacity is ``user_config.max_adapters``). Serve's own LRU is unlimited
  (``max_num_models_per_replica=-1``) so it never evicts by itself; after every load the ids
  the cache evicted are taken out of Serve's LRU (:class:`~.serve_multiplex.MultiplexLRU`), so
  routing follows what is really resident. (Two LRUs evicting independently made the replica
  reload adapters several times more often than the cache alone.) A token dropped by Serve
  anyway (its ``__del__``) still evicts through :meth:`ModelServer.evict`.
- ``reconfigure(user_config)`` (Serve calls it in place, no restart, when only ``user_config``
  changes) applies the adapter registry: added adapters become routable at once; removed ones
  (and ones whose path changed) are evicted, and a removed one then answers 404.
- ``Ingress`` serves :func:`~.http.app.create_app` over :class:`~.ray_backend.RayModelBackend`,
  which calls the ``Model`` handle with ``.options(multiplexed_model_id=<adapter>)``; requests
  for the base model carry no multiplexed model id. Streaming uses
  ``handle.options(stream=True)``. Serving errors cross the Ray boundary as
  :class:`~.ray_backend.PortableServingError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .errors import ServingError, UnknownModelError
from .http.app import DEFAULT_MAX_REQUEST_BYTES, create_app
from .ray_backend import PortableServingError, RayModelBackend
from .residency_board import BoardClient
from .serve_multiplex import MultiplexLRU
from .server.backend import ModelServerBackend
from .server.model_server import CLIENT_CLOSED
from .types import (
    BASE_ADAPTER,
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    GenerateResult,
    StreamDelta,
)

logger = logging.getLogger(__name__)

#: Longest wait for a residency report inside Serve's health check, seconds.
REPORT_TIMEOUT_S = 5.0
#: The adapter cache's capacity before the first ``reconfigure`` sets ``max_adapters``.
DEFAULT_MAX_ADAPTERS = 8
#: Serve's multiplex LRU limit: unlimited (Serve's public value), the adapter cache evicts.
SERVE_LRU_UNLIMITED = -1


class AppArgs(BaseModel):
    """The serve config's ``args`` (``docs/interfaces.md`` section 3).

    Attributes:
        served_name: Name of the base model in requests and ``/v1/models``.
        base_path: Local folder of the installed base model.
        task: ``text-generation`` or ``text-classification``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        labels: Label names by id of a classification base (overrides its config).
        max_batch_size: Largest mixed batch the model replica runs.
        batch_wait_timeout_ms: Milliseconds a batch waits to fill.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        max_inputs_per_request: Most texts (``/v1/classify`` ``input``) or prompts
            (``/v1/completions`` ``prompt`` list) one request may carry.
        max_request_bytes: Largest HTTP request body in bytes; a larger one is answered 413
            before it is parsed (default 4 MiB).
        allowed_hosts: Host names (without port) the ingress answers; any other ``Host``
            header gets 400. Empty (the default, used on a cluster): any host. Local mode sets
            the loopback names, so a web page cannot reach the API by DNS rebinding.
    """

    model_config = ConfigDict(extra="forbid")

    served_name: str = Field(min_length=1)
    base_path: str = Field(min_length=1)
    task: Literal["text-generation", "text-classification"]
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    labels: dict[str, str] | None = None
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_ms: float = Field(5.0, ge=0)
    max_tokens_limit: int = Field(2048, ge=1)
    max_inputs_per_request: int = Field(256, ge=1)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)
    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys_as_strings(cls, value: Any) -> Any:
        # YAML writes {0: negative} as int keys; a list means ids 0..n-1.
        if isinstance(value, list):
            return {str(i): v for i, v in enumerate(value)}
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names_only(cls, value: list[str]) -> list[str]:
        # TrustedHostMiddleware compares the Host header's name without its port; a wildcard
        # may only lead ("*.example.com"), and "*" alone would allow any host.
        for host in value:
            bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 literal
            bad_wildcard = "*" in host and not (host.startswith("*.") and "*" not in host[1:])
            if not host or bad_wildcard or (":" in host and not bracketed):
                raise ValueError(
                    f"{host!r} is not a host name (no port; IPv6 in brackets; a wildcard only "
                    "as '*.domain')"
                )
        return [host.lower() for host in value]

    @classmethod
    def parse(cls, args: Any) -> AppArgs:
        """Validate ``args`` with an error that names the bad field.

        Args:
            args: The serve config's ``args`` mapping.

        Returns:
            The validated arguments.

        Raises:
            ValueError: Not a mapping, unknown keys, missing or ill-typed values (the message
                lists ``args.<field>: <problem>`` for each).
        """
        if not isinstance(args, dict):
            raise ValueError(f"build_app: args must be a mapping, got {type(args).__name__}")
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"args.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"build_app: invalid args: {problems}") from None


class _ResidentAdapter:
    """Serve's multiplexed "model" for one adapter: a token whose ``__del__`` evicts it.

    Serve's LRU calls ``__del__`` in a thread-pool thread when it drops the adapter; the
    eviction runs on the replica's event loop and the thread waits for it. A later garbage
    collection calls ``__del__`` again and finds the token released.
    """

    def __init__(self, server: Any, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.name = name
        self.loop = loop
        self.released = False

    def __del__(self) -> None:
        if self.released:
            return
        self.released = True
        if self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # garbage collected on the loop thread: do not block it
            self.loop.create_task(self.server.evict(self.name))
            return
        future = asyncio.run_coroutine_threadsafe(self.server.evict(self.name), self.loop)
        try:
            future.result(timeout=300)
        except Exception:
            logger.exception("evicting adapter %s failed", self.name)


@serve.deployment(name="Model", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class Model:
    """Serve deployment holding one base model and its adapters (see module docstring).

    Args:
        args: The serve config's ``args`` (validated by :class:`AppArgs`).
    """

    def __init__(self, args: dict[str, Any]) -> None:
        from ray.serve import metrics

        from .server.factory import build_model_server

        cfg = AppArgs.parse(args)
        self.args = cfg
        self.server = build_model_server(
            cfg.base_path,
            cfg.task,
            dtype=cfg.dtype,
            labels=cfg.labels,
            max_adapters=DEFAULT_MAX_ADAPTERS,
            max_batch_size=cfg.max_batch_size,
            batch_wait_timeout_s=cfg.batch_wait_timeout_ms / 1000.0,
            max_tokens_limit=cfg.max_tokens_limit,
            # Serve's metrics: each replica's figures on its Ray node's metrics endpoint.
            metrics_factory=metrics,
        )
        self.backend = ModelServerBackend(self.server)
        self.max_adapters = DEFAULT_MAX_ADAPTERS
        self.reconfigures = 0
        self.server.unload_listeners.append(self._stop_routing)
        self.server.unload_listeners.append(self._report_soon)
        self.board = _board_client()
        self._reports: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- adapter residency

    def facts(self) -> dict[str, Any]:
        """What this replica reports to its application's residency board."""
        stats = self.server.stats()
        return {
            "pid": os.getpid(),
            "resident": list(self.server.resident_adapters()),
            "max_adapters": self.max_adapters,
            "requests_per_minute": stats["requests_per_minute"],
            "last_load_seconds": stats["last_load_seconds"],
            "load_failures": stats["load_failures"],
        }

    async def _report(self) -> None:
        if self.board is not None:
            await self.board.report(self.facts())

    def _report_soon(self, _name: str | None = None) -> None:
        """Report in the background (an adapter was loaded or unloaded)."""
        task = asyncio.get_running_loop().create_task(self._report())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def check_health(self) -> None:
        """Serve's periodic health check (every ``health_check_period_s``, 10 s by default):
        also this replica's residency heartbeat. Never raises for the report, and gives it at
        most :data:`REPORT_TIMEOUT_S` (a slow board must not fail the health check)."""
        try:
            await asyncio.wait_for(self._report(), REPORT_TIMEOUT_S)
        except TimeoutError:
            logger.warning("residency report took over %.0f s; skipped", REPORT_TIMEOUT_S)

    def _multiplex(self) -> MultiplexLRU | None:
        return MultiplexLRU.of(self)

    @serve.multiplexed(max_num_models_per_replica=SERVE_LRU_UNLIMITED)
    async def load_adapter(self, name: str) -> _ResidentAdapter:
        """Serve's multiplexed loader: make ``name`` resident in the model server.

        Args:
            name: Adapter name (the request's multiplexed model id).

        Returns:
            The token Serve keeps in its LRU; dropping it evicts the adapter.

        Raises:
            UnknownModelError: Not registered (404).
            AdapterLoadError: Its files failed to load (503); nothing is cached.
        """
        await self.server.ensure_adapter(name)
        self._report_soon()
        return _ResidentAdapter(self.server, name, asyncio.get_running_loop())

    def _stop_routing(self, name: str) -> None:
        """The adapter cache unloaded ``name``: take it out of Serve's multiplex LRU."""
        lru = self._multiplex()
        token = lru.forget(name) if lru is not None else None
        if token is not None:
            token.released = True  # already gone from the server

    def _sync_multiplex(self) -> None:
        """Take out of Serve's multiplex LRU what the adapter cache no longer holds."""
        lru = self._multiplex()
        if lru is None:
            return
        resident = set(self.server.resident_adapters())
        registered = self.server.registered_adapters()
        for name in lru.names():
            if name not in resident or name not in registered:
                token = lru.forget(name)
                if token is not None:
                    token.released = True  # already gone from the server

    async def _use_adapter(self, adapter: str | None) -> None:
        """Make ``adapter`` resident through Serve's multiplexed loader.

        Raises:
            UnknownModelError: Not registered.
            AdapterLoadError: It failed to load. Either way the request is counted as refused.
        """
        if adapter is None or adapter == BASE_ADAPTER:
            return
        try:
            if adapter not in self.server.registered_adapters():
                raise UnknownModelError(adapter)
            # The adapter cache loads first, concurrently with other loads (each waits for its
            # own place); Serve's multiplexed loader, which holds one lock over every load of
            # the replica, then finds it resident and only records the id for routing. Loading
            # under Serve's lock made every load wait for the slowest one to find a place.
            await self.server.ensure_adapter(adapter)
            await self.load_adapter(adapter)
        except ServingError as exc:
            self.server.count_refused(adapter, exc.status_code)
            raise
        except asyncio.CancelledError:  # the caller went away while the adapter loaded
            self.server.count_refused(adapter, CLIENT_CLOSED)
            raise
        self._sync_multiplex()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` in place: ``{"max_adapters": int, "adapters": {name: spec}}``.

        Args:
            user_config: The ``Model`` deployment's ``user_config``.

        Raises:
            ServingError: The registry is invalid (the message names the field); the previous
                registry stays in force.
        """
        if not isinstance(user_config, dict):
            raise ValueError(
                f"Model.user_config must be a mapping, got {type(user_config).__name__}"
            )
        before = self.server.registered_adapters()
        # ModelServer.reconfigure = apply_user_config that also waits for the evictions.
        await self.server.reconfigure(user_config)
        after = self.server.registered_adapters()
        self.max_adapters = int(user_config.get("max_adapters", self.max_adapters))
        stale = [
            n
            for n, spec in before.items()
            if n not in after or (spec or {}).get("path") != (after[n] or {}).get("path")
        ]
        lru = self._multiplex()
        for name in stale:
            if lru is not None:
                token = lru.forget(name)
                if token is not None:
                    token.released = True
            if name in self.server.resident_adapters():
                await self.server.evict(name)
        self._sync_multiplex()
        self.reconfigures += 1
        logger.info(
            "reconfigured: %d adapters registered (+%d, -%d), max_adapters=%d",
            len(after),
            len(set(after) - set(before)),
            len(set(before) - set(after)),
            self.max_adapters,
        )

    # ----------------------------------------------------------------- requests

    async def generate(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> GenerateResult:
        """Generate a completion for ``req`` (prompt rendered from ``messages`` when given).

        Raises:
            PortableServingError: Any serving error (404 unknown adapter, 400, 503 load failure).
        """
        try:
            await self._use_adapter(req.adapter)
            return await self.backend.generate(req, messages)
        except ServingError as exc:
            raise PortableServingError.of(exc) from None

    async def generate_many(self, reqs: list[GenerateRequest]) -> list[GenerateResult]:
        """Generate one completion per request (one HTTP request's prompts, one adapter).

        Raises:
            PortableServingError: Any serving error (the first request's that failed).
        """
        try:
            await self._use_adapter(reqs[0].adapter if reqs else None)
            return await self.server.generate_many(reqs)
        except ServingError as exc:
            raise PortableServingError.of(exc) from None

    async def generate_stream(
        self, req: GenerateRequest, messages: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Stream a completion for ``req``, one :class:`~.types.StreamDelta` per step.

        Raises:
            PortableServingError: Any serving error, before the first delta when it concerns
                the request itself.
        """
        try:
            await self._use_adapter(req.adapter)
            async for delta in self.backend.generate_stream(req, messages):
                yield delta
        except ServingError as exc:
            raise PortableServingError.of(exc) from None

    async def classify(self, req: ClassifyRequest) -> ClassifyResult:
        """Classify ``req.texts`` with ``req.adapter``'s head (or the base's).

        Raises:
            PortableServingError: Any serving error.
        """
        try:
            await self._use_adapter(req.adapter)
            return await self.server.classify(req)
        except ServingError as exc:
            raise PortableServingError.of(exc) from None

    async def render_chat(self, messages: list[dict[str, Any]]) -> str | list[int]:
        """The prompt the chat template makes of ``messages`` (for debugging clients)."""
        return await self.server.render_chat(messages)

    async def registered_adapters(self) -> dict[str, dict[str, Any]]:
        """The adapter registry from ``user_config`` (name -> path, rank, labels)."""
        return self.server.registered_adapters()

    async def info(self) -> dict[str, Any]:
        """Replica facts: pid, base folder, registered and resident adapters, multiplexed ids,
        stats, and every live replica's residency facts (``replicas``, from the board).

        The operator reads ``base_path`` and ``registered`` (``GET /stats``) before it calls a
        BaseModel or an adapter Ready (``lorafleet_operator.serveprobe``), and ``replicas`` for
        ``status.serving``.
        """
        lru = self._multiplex()
        replicas = await self.board.view() if self.board is not None else {}
        return {
            "replicas": replicas,
            "pid": os.getpid(),
            "task": self.args.task,
            "base_path": self.args.base_path,
            "max_adapters": self.max_adapters,
            "reconfigures": self.reconfigures,
            "registered": sorted(self.server.registered_adapters()),
            "resident": list(self.server.resident_adapters()),
            "multiplexed": lru.names() if lru is not None else [],
            "stats": self.server.stats(),
        }

    async def ready(self) -> bool:
        """True once the base model is loaded (the constructor has returned)."""
        return True


def _board_client() -> BoardClient | None:
    """This replica's link to its application's residency board (``None`` outside Serve)."""
    try:
        ctx = serve.get_replica_context()
    except Exception:  # not in a Serve replica (tests building Model directly)
        return None
    return BoardClient(ctx.app_name or "default", ctx.replica_tag)


#: Concurrent requests one Ingress replica forwards. Serve's default (5) would cap what the
#: Model replicas' batchers ever see; the ingress only awaits handles, so it can hold many.
INGRESS_MAX_ONGOING_REQUESTS = 1024


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
)
@serve.ingress()
class Ingress:
    """HTTP ingress deployment: the OpenAI-compatible API of :mod:`.http` over ``Model``.

    Args:
        model: Handle of the ``Model`` deployment.
        args: The serve config's ``args``.
    """

    def __init__(self, model: DeploymentHandle, args: dict[str, Any]) -> None:
        self.args = AppArgs.parse(args)
        self.backend = RayModelBackend(model)

    def __serve_build_asgi_app__(self) -> Any:
        """Build the FastAPI app (Serve calls this after ``__init__`` on each replica).

        With ``args.allowed_hosts``, starlette's ``TrustedHostMiddleware`` answers 400 to a
        request whose ``Host`` header names another host.
        """
        app = create_app(
            self.backend,
            served_name=self.args.served_name,
            task=self.args.task,
            max_tokens_limit=self.args.max_tokens_limit,
            max_inputs_per_request=self.args.max_inputs_per_request,
            max_request_bytes=self.args.max_request_bytes,
            labels=self.args.labels,
            title=f"lorafleet: {self.args.served_name}",
        )
        if self.args.allowed_hosts:
            app.add_middleware(TrustedHostMiddleware, allowed_hosts=self.args.allowed_hosts)
        return app


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (``import_path: lorafleet_serving.ray_app:build_app``).

    Args:
        args: ``{"served_name", "base_path", "task", "dtype"?, "labels"?, "max_batch_size"?,
            "batch_wait_timeout_ms"?, "max_tokens_limit"?, "max_inputs_per_request"?,
            "max_request_bytes"?, "allowed_hosts"?}`` (``docs/interfaces.md`` section 3).
            Deployment options (replicas, resources, ``user_config``) come from the serve
            config's ``deployments`` entries named ``Ingress`` and ``Model``.

    Returns:
        ``Ingress.bind(Model.bind(args), args)``.

    Raises:
        ValueError: ``args`` is invalid (every bad field is named).
    """
    cfg = AppArgs.parse(args).model_dump()
    return Ingress.bind(Model.bind(cfg), cfg)
