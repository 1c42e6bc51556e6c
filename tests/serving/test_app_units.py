"""Unit tests of the Ray Serve app's pieces that need no running Ray (fast)."""

from __future__ import annotations

import asyncio
import pickle
import threading

import pytest
from lorafleet_serving.errors import AdapterLoadError, InvalidRequestError, UnknownModelError
from lorafleet_serving.http.errors import ModelUnavailableError
from lorafleet_serving.ray_app import (
    AppArgs,
    Model,
    _ResidentAdapter,
    build_app,
)
from lorafleet_serving.ray_backend import PortableServingError, _as_serving_error
from lorafleet_serving.types import GenerateRequest
from ray import serve
from ray.exceptions import RayTaskError

ARGS = {"served_name": "m", "base_path": "/models/m", "task": "text-generation"}


def test_app_args_defaults_and_validation() -> None:
    cfg = AppArgs.parse(dict(ARGS))
    assert (cfg.dtype, cfg.max_batch_size, cfg.batch_wait_timeout_ms, cfg.max_tokens_limit) == (
        "auto",
        16,
        5.0,
        2048,
    )
    with pytest.raises(ValueError, match=r"args\.task"):
        AppArgs.parse({**ARGS, "task": "translation"})
    with pytest.raises(ValueError, match=r"args\.max_tokens_limit"):
        AppArgs.parse({**ARGS, "max_tokens_limit": 0})
    with pytest.raises(ValueError, match=r"args\.servedname"):
        AppArgs.parse({**ARGS, "servedname": "typo"})
    with pytest.raises(ValueError, match=r"args\.base_path"):
        AppArgs.parse({"served_name": "m", "task": "text-generation"})
    with pytest.raises(ValueError, match="must be a mapping"):
        AppArgs.parse(["not", "a", "dict"])


def test_app_args_label_keys() -> None:
    assert AppArgs.parse({**ARGS, "labels": {0: "neg", 1: "pos"}}).labels == {
        "0": "neg",
        "1": "pos",
    }
    assert AppArgs.parse({**ARGS, "labels": ["neg", "pos"]}).labels == {"0": "neg", "1": "pos"}
    with pytest.raises(ValueError, match=r"args\.labels"):
        AppArgs.parse({**ARGS, "labels": "neg,pos"})


def test_build_app_binds_ingress_over_model() -> None:
    app = build_app({**ARGS, "labels": None})
    assert isinstance(app, serve.Application)
    with pytest.raises(ValueError, match=r"args\.dtype"):
        build_app({**ARGS, "dtype": "int4"})


@pytest.mark.parametrize(
    "error",
    [
        AdapterLoadError("sentiment", "adapter_config.json is missing"),
        UnknownModelError("nope"),
        InvalidRequestError("max_tokens too big", param="max_tokens"),
    ],
)
def test_serving_errors_survive_pickling(error) -> None:
    portable = PortableServingError.of(error)
    back = pickle.loads(pickle.dumps(portable))
    assert back.to_dict() == error.to_dict()
    assert back.status_code == error.status_code


def test_ray_wrapped_errors_are_unwrapped() -> None:
    inner = PortableServingError.of(AdapterLoadError("a", "bad file"))
    try:
        raise inner
    except PortableServingError as exc:
        wrapped = RayTaskError("generate", "traceback", exc)
    assert _as_serving_error(wrapped) is inner
    assert isinstance(_as_serving_error(wrapped.as_instanceof_cause()), PortableServingError)
    other = ValueError("boom")
    assert _as_serving_error(other) is other


def test_backpressure_becomes_503() -> None:
    from ray.serve.exceptions import BackPressureError

    err = _as_serving_error(BackPressureError(num_queued_requests=3, max_queued_requests=2))
    assert isinstance(err, ModelUnavailableError) and err.status_code == 503


class _RecordingServer:
    def __init__(self) -> None:
        self.evicted: list[tuple[str, str]] = []

    async def evict(self, name: str) -> None:
        self.evicted.append((name, threading.current_thread().name))


async def test_resident_adapter_del_evicts_once_on_the_loop() -> None:
    server = _RecordingServer()
    loop = asyncio.get_running_loop()
    token = _ResidentAdapter(server, "alpha", loop)
    # Serve's LRU calls __del__ in a thread-pool thread and awaits it.
    await loop.run_in_executor(None, token.__del__)
    assert [name for name, _ in server.evicted] == ["alpha"]
    assert server.evicted[0][1] == threading.current_thread().name  # ran on the loop thread
    token.__del__()  # garbage collection later: no second eviction
    await asyncio.sleep(0)
    assert len(server.evicted) == 1


async def test_model_class_reconfigure_without_ray(tiny_causal_lm, tiny_lora_adapters) -> None:
    """The Model deployment's class applies user_config in place and rejects bad ones."""
    model = Model.func_or_class(
        {"served_name": "m", "base_path": str(tiny_causal_lm), "task": "text-generation"}
    )
    good = {
        "max_adapters": 2,
        "adapters": {"alpha": {"path": str(tiny_lora_adapters["alpha"]), "rank": 8}},
    }
    await model.reconfigure(good)
    assert await model.registered_adapters() == {
        "alpha": {"path": str(tiny_lora_adapters["alpha"]), "rank": 8}
    }
    with pytest.raises(InvalidRequestError, match="path"):
        await model.reconfigure({"adapters": {"beta": {"rank": 8}}})
    assert set(await model.registered_adapters()) == {"alpha"}  # unchanged
    with pytest.raises(ValueError, match="mapping"):
        await model.reconfigure(["alpha"])
    info = await model.info()
    assert info["registered"] == ["alpha"] and info["max_adapters"] == 2
    assert info["reconfigures"] == 1
    with pytest.raises(PortableServingError) as unknown:
        await model.generate(GenerateRequest(prompt="hi", adapter="nope"))
    assert unknown.value.status_code == 404
    result = await model.generate(GenerateRequest(prompt="the cat", max_tokens=3))
    assert result.completion_tokens >= 1
    await model.server.close()
