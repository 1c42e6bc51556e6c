"""MixedBatcher: window, size, concurrency and error behaviour (pure asyncio, fast)."""

from __future__ import annotations

import asyncio
import time

import pytest
from lorafleet_serving.server.batcher import MixedBatcher


class Recorder:
    """A handler that records batches and can hold them open or fail."""

    def __init__(self, hold_s: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.hold_s = hold_s
        self.fail_on = fail_on
        self.running = 0
        self.max_running = 0

    async def __call__(self, items: list[str]) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.batches.append(list(items))
        try:
            if self.fail_on in items:
                raise RuntimeError("boom")
            await asyncio.sleep(self.hold_s)
        finally:
            self.running -= 1


async def _drain(batcher: MixedBatcher, rec: Recorder, n_items: int) -> None:
    deadline = time.monotonic() + 5
    while sum(len(b) for b in rec.batches) < n_items or rec.running:
        assert time.monotonic() < deadline, rec.batches
        await asyncio.sleep(0.005)
    await batcher.close()


async def test_items_within_the_window_share_one_batch():
    rec = Recorder()
    batcher = MixedBatcher(rec, max_batch_size=8, batch_wait_timeout_s=0.2)
    batcher.submit("alpha:1")
    await asyncio.sleep(0.02)
    batcher.submit("beta:1")
    batcher.submit("__base__:1")
    await _drain(batcher, rec, 3)
    assert rec.batches == [["alpha:1", "beta:1", "__base__:1"]]
    assert batcher.mean_batch_size == 3


async def test_batch_size_caps_and_full_batch_does_not_wait():
    rec = Recorder()
    batcher = MixedBatcher(rec, max_batch_size=4, batch_wait_timeout_s=10.0)
    start = time.monotonic()
    for i in range(8):
        batcher.submit(f"x{i}")
    while len(rec.batches) < 2:
        await asyncio.sleep(0.002)
    assert time.monotonic() - start < 1.0, "a full batch must go without waiting the window"
    assert rec.batches == [["x0", "x1", "x2", "x3"], ["x4", "x5", "x6", "x7"]]
    await batcher.close()


async def test_items_after_the_window_go_to_the_next_batch():
    rec = Recorder()
    batcher = MixedBatcher(rec, max_batch_size=8, batch_wait_timeout_s=0.02)
    batcher.submit("a")
    await asyncio.sleep(0.15)
    batcher.submit("b")
    await _drain(batcher, rec, 2)
    assert rec.batches == [["a"], ["b"]]


async def test_wait_is_bounded_by_the_timeout():
    rec = Recorder()
    batcher = MixedBatcher(rec, max_batch_size=8, batch_wait_timeout_s=0.05)
    start = time.monotonic()
    batcher.submit("only")
    while not rec.batches:
        await asyncio.sleep(0.002)
    waited = time.monotonic() - start
    assert 0.04 <= waited < 0.5
    await batcher.close()


async def test_concurrency_limit_and_queue_forms_next_batch():
    rec = Recorder(hold_s=0.1)
    batcher = MixedBatcher(
        rec, max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=1
    )
    batcher.submit("first")
    await asyncio.sleep(0.02)  # "first" is running; these queue up meanwhile
    for i in range(5):
        batcher.submit(f"q{i}")
    await _drain(batcher, rec, 6)
    assert rec.max_running == 1
    assert rec.batches == [["first"], ["q0", "q1", "q2", "q3", "q4"]]


async def test_two_batches_may_run_at_once():
    rec = Recorder(hold_s=0.1)
    batcher = MixedBatcher(
        rec, max_batch_size=1, batch_wait_timeout_s=0.0, max_concurrent_batches=2
    )
    for i in range(4):
        batcher.submit(f"r{i}")
    await _drain(batcher, rec, 4)
    assert rec.max_running == 2


async def test_failing_batch_reports_its_items_and_batcher_keeps_going():
    rec = Recorder(fail_on="bad")
    failures: list[tuple[list[str], str]] = []
    batcher = MixedBatcher(
        rec,
        max_batch_size=2,
        batch_wait_timeout_s=0.05,
        on_error=lambda items, exc: failures.append((items, str(exc))),
    )
    batcher.submit("bad")
    batcher.submit("also-in-that-batch")
    await asyncio.sleep(0.1)
    batcher.submit("later")
    await _drain(batcher, rec, 3)
    assert failures == [(["bad", "also-in-that-batch"], "boom")]
    assert rec.batches[-1] == ["later"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
        ({"max_concurrent_batches": 0}, "max_concurrent_batches"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    async def handler(items):
        return None

    with pytest.raises(ValueError, match=field):
        MixedBatcher(handler, **kwargs)


async def test_groups_are_taken_round_robin_so_a_late_single_item_is_not_starved():
    """Items of one group (one request's prompts) share a turn: a later lone item is taken
    after at most one item of each earlier group, not after all of them."""
    rec = Recorder(hold_s=0.05)
    batcher: MixedBatcher[str] = MixedBatcher(rec, max_batch_size=2, batch_wait_timeout_s=0.0)
    batcher.submit("warm")  # occupies the only batch slot, so the rest queue up
    await asyncio.sleep(0.01)
    for i in range(6):
        batcher.submit(f"big{i}", group="big")
    for i in range(2):
        batcher.submit(f"other{i}", group="other")
    batcher.submit("late")  # no group: a group of its own
    assert batcher.take_nowait(3) == ["big0", "other0", "late"]
    assert batcher.take_nowait(3) == ["big1", "other1", "big2"]
    assert batcher.take_nowait(10) == ["big3", "big4", "big5"]
    assert batcher.take_nowait(10) == []
    # Batches formed by the collector follow the same order.
    for i in range(4):
        batcher.submit(f"big{i}", group="big")
    batcher.submit("late")
    await _drain(batcher, rec, 1 + 5)
    assert rec.batches[1:] == [["big0", "late"], ["big1", "big2"], ["big3"]]
