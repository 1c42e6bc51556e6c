"""The one place lorafleet touches Ray Serve internals (the multiplex LRU)."""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace

from lorafleet_serving.serve_multiplex import WRAPPER_ATTR, MultiplexLRU, internals_missing


def test_the_installed_ray_still_has_the_multiplex_internals_we_use() -> None:
    """Fails loudly when a Ray upgrade moves what MultiplexLRU edits (else routing to
    replicas would silently disagree with what the adapter cache holds)."""
    assert internals_missing() == []


def test_multiplex_lru_edits_the_wrapper_and_asks_for_a_push() -> None:
    wrapper = SimpleNamespace(
        models=OrderedDict(a="ta", b="tb", c="tc"),
        max_num_models_per_replica=8,
        _push_multiplexed_replica_info=False,
    )
    owner = SimpleNamespace(**{WRAPPER_ATTR: wrapper})
    assert MultiplexLRU.of(SimpleNamespace()) is None  # before the first load
    lru = MultiplexLRU.of(owner)
    assert lru is not None and lru.names() == ["a", "b", "c"] and len(lru) == 3
    assert lru.forget("zzz") is None and wrapper._push_multiplexed_replica_info is False
    assert lru.forget("b") == "tb" and wrapper._push_multiplexed_replica_info is True
    assert lru.names() == ["a", "c"]
