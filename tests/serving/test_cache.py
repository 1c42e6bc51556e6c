"""AdapterCache: single-flight loads, LRU eviction, pinning, failures (fake loaders, fast)."""

from __future__ import annotations

import asyncio

import pytest
from lorafleet_serving.errors import AdapterLoadError, InvalidRequestError, UnknownModelError
from lorafleet_serving.server.adapter_cache import AdapterCache, AdapterSpec


class FakeEngine:
    """Stands in for the engine: records loads/unloads, can be slow or fail per adapter."""

    def __init__(self, delay_s: float = 0.02, broken: frozenset[str] = frozenset()) -> None:
        self.delay_s = delay_s
        self.broken = set(broken)
        self.loaded: set[str] = set()
        self.log: list[tuple[str, str]] = []
        self.max_loaded = 0

    async def load(self, spec: AdapterSpec) -> None:
        self.log.append(("load", spec.name))
        await asyncio.sleep(self.delay_s)
        if spec.name in self.broken:
            raise AdapterLoadError(spec.name, "adapter_model.safetensors: invalid header")
        assert spec.name not in self.loaded, f"{spec.name} loaded twice"
        self.loaded.add(spec.name)
        self.max_loaded = max(self.max_loaded, len(self.loaded))

    async def unload(self, name: str) -> None:
        self.log.append(("unload", name))
        await asyncio.sleep(self.delay_s / 2)
        self.loaded.remove(name)


def make_cache(engine: FakeEngine, max_adapters: int, names=("a", "b", "c")) -> AdapterCache:
    cache = AdapterCache(engine.load, engine.unload, max_adapters)
    cache.set_registry({n: AdapterSpec(n, f"/models/{n}") for n in names})
    return cache


async def test_concurrent_first_requests_load_once():
    engine = FakeEngine()
    cache = make_cache(engine, 2)
    await asyncio.gather(*[cache.ensure("a") for _ in range(20)])
    assert cache.loads == {"a": 1}
    assert engine.log == [("load", "a")]


async def test_burst_over_three_adapters_with_two_slots():
    engine = FakeEngine()
    cache = make_cache(engine, 2)
    uses: list[str] = []

    async def request(name: str) -> None:
        async with cache.lease(name):
            assert name in engine.loaded, "an adapter in use must be loaded"
            uses.append(name)
            await asyncio.sleep(0.01)
            assert name in engine.loaded, "an adapter in use must never be evicted"

    await asyncio.gather(*[request(n) for n in ["a", "b", "c"] * 5])
    assert len(uses) == 15
    assert engine.max_loaded <= 2
    assert cache.evictions >= 1
    assert len(cache.resident()) == 2


async def test_lru_order_picks_the_victim():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 2)
    await cache.ensure("a")
    await cache.ensure("b")
    await cache.ensure("a")  # a is now most recently used
    await cache.ensure("c")
    assert cache.resident() == ["a", "c"]
    assert ("unload", "b") in engine.log and ("unload", "a") not in engine.log


async def test_pinned_adapter_is_not_evicted_until_released():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 1)
    release = asyncio.Event()

    async def hold_a() -> None:
        async with cache.lease("a"):
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await asyncio.sleep(0.01)
    loading_b = asyncio.create_task(cache.ensure("b"))
    await asyncio.sleep(0.05)
    assert not loading_b.done() and engine.loaded == {"a"}
    release.set()
    await asyncio.wait_for(loading_b, 5)
    await holder
    assert engine.loaded == {"b"}


async def test_failed_load_reaches_every_waiter_then_retries():
    engine = FakeEngine(broken=frozenset({"b"}))
    cache = make_cache(engine, 2)
    results = await asyncio.gather(
        *[cache.ensure("b") for _ in range(5)], cache.ensure("a"), return_exceptions=True
    )
    assert all(isinstance(r, AdapterLoadError) for r in results[:5])
    assert "invalid header" in str(results[0])
    assert results[5] is True and cache.resident() == ["a"]
    assert engine.log.count(("load", "b")) == 1
    assert cache.load_failures == {"b": 1}
    engine.broken.clear()  # files fixed: the next request loads it
    await cache.ensure("b")
    assert cache.resident() == ["a", "b"]


async def test_unknown_and_removed_adapters():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 2)
    with pytest.raises(UnknownModelError) as err:
        await cache.ensure("nope")
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    await cache.ensure("a")
    await cache.ensure("b")
    stale = cache.set_registry(
        {"b": AdapterSpec("b", "/models/b"), "c": AdapterSpec("c", "/models/c2")}
    )
    assert stale == ["a"]
    for name in stale:
        assert await cache.evict(name)
    with pytest.raises(UnknownModelError):
        await cache.ensure("a")
    assert engine.loaded == {"b"}
    # A changed path makes a resident adapter stale too.
    assert cache.set_registry({"b": AdapterSpec("b", "/models/b-v2")}) == ["b"]


async def test_eviction_waits_for_in_flight_requests():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 2)
    done = asyncio.Event()

    async def use_a() -> None:
        async with cache.lease("a"):
            await asyncio.sleep(0.05)
            assert "a" in engine.loaded
        done.set()

    task = asyncio.create_task(use_a())
    await asyncio.sleep(0.01)
    assert await cache.evict("a")
    assert done.is_set() and engine.loaded == set()
    await task


async def test_shrink_evicts_least_recently_used():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 3)
    for n in ("a", "b", "c"):
        await cache.ensure(n)
    await cache.shrink_to(1)
    assert cache.resident() == ["c"] and engine.loaded == {"c"}
    with pytest.raises(InvalidRequestError, match="max_adapters"):
        await cache.shrink_to(0)


def test_spec_validation_names_the_field():
    with pytest.raises(InvalidRequestError, match=r"adapters\.x\.path"):
        AdapterSpec.from_config("x", {"rank": 8})
    with pytest.raises(InvalidRequestError, match=r"adapters\.x\.rank"):
        AdapterSpec.from_config("x", {"path": "/p", "rank": "eight"})
    spec = AdapterSpec.from_config("x", {"path": "/p", "rank": 8, "labels": ["n", "p"], "sha": "1"})
    assert spec.as_dict() == {"path": "/p", "rank": 8, "labels": {"0": "n", "1": "p"}, "sha": "1"}


async def test_steady_traffic_to_resident_adapters_does_not_starve_a_load():
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 1)
    stop = False

    async def busy_a() -> None:
        while not stop:
            async with cache.lease("a"):
                await asyncio.sleep(0.01)

    workers = [asyncio.create_task(busy_a()) for _ in range(4)]
    await asyncio.sleep(0.05)  # "a" is pinned at every moment from now on
    async with asyncio.timeout(5):
        async with cache.lease("b"):
            assert engine.loaded == {"b"}
    stop = True
    await asyncio.gather(*workers)
    assert cache.loads["b"] == 1 and cache.loads["a"] >= 2


async def test_a_waiting_load_drains_one_adapter_while_the_others_keep_serving():
    """Two places, both in use: a load for "c" stops new requests to one adapter only (the one
    with the fewest in flight); requests to the other are admitted meanwhile, so the batch stays
    full while the place empties."""
    engine = FakeEngine(delay_s=0.0)
    cache = make_cache(engine, 2)
    release = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def hold(name: str) -> None:
        async with cache.lease(name):
            await release[name].wait()

    holders = [asyncio.create_task(hold(n)) for n in ("a", "a", "b")]  # b: fewest in flight
    await asyncio.sleep(0.01)
    load_c = asyncio.create_task(cache.ensure("c"))
    await asyncio.sleep(0.01)
    assert not load_c.done()
    async with asyncio.timeout(0.5):  # "a" is not draining: admitted at once
        async with cache.lease("a"):
            pass
    blocked_b = asyncio.create_task(hold("b"))  # "b" drains: a new request waits
    await asyncio.sleep(0.05)
    assert cache._pins["b"] == 1, "a new request to the draining adapter was admitted"
    release["b"].set()  # b's last request ends: evicted, c loads
    async with asyncio.timeout(5):
        await load_c
    assert engine.loaded == {"a", "c"}
    release["a"].set()
    async with asyncio.timeout(5):
        await asyncio.gather(*holders, blocked_b)  # b's waiting request reloads b later
    assert cache.loads["b"] == 2
