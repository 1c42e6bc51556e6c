"""Step-wise decoding of a mixed-adapter generation batch with a KV cache.

:class:`GenerationBatch` is what :meth:`TransformersEngine.start_generation
<lorafleet_serving.engine.transformers_engine.TransformersEngine.start_generation>` returns (a
:class:`~.protocol.RunningBatch`): left-padded rows, prefill in the first step, one token per
active row per later step, greedy or temperature/top-p sampling, stop strings held back until
they can no longer match, incremental detokenisation, and rows joining (continuous batching)
or leaving (finished, cancelled) between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..types import FinishReason
from .protocol import GenerationRow, StepEvent

if TYPE_CHECKING:
    from .transformers_engine import TransformersEngine


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that could be the start of a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the model's ``generation_config.eos_token_id`` (one
    or a list) and the tokenizer's ``eos_token_id``."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


class GenerationBatch:
    """Step-wise decoding of a mixed-adapter batch with a KV cache.

    Rows are left-padded; the prefill runs in the first :meth:`step`, each later step feeds one
    token per active row. Finished or cancelled rows are dropped from the cache
    (``DynamicCache.batch_select_indices``) so they cost nothing afterwards.

    Args:
        engine: The engine (text-generation): its ``device``, ``config``, ``tokenizer``,
            ``eos_token_ids`` and ``forward_logits``.
        rows: The requests.
    """

    def __init__(self, engine: TransformersEngine, rows: list[GenerationRow]) -> None:
        from transformers import DynamicCache

        self.engine = engine
        self.rows = rows
        self.active = list(range(len(rows)))
        self.cache = DynamicCache(config=engine.config)
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        for row in rows:
            if row.temperature > 0 and row.seed is not None:
                row.generator = torch.Generator(device=engine.device).manual_seed(row.seed)

    @property
    def done(self) -> bool:
        """True when every row has finished or was cancelled."""
        return not self.active

    def _prefill_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.engine.device
        pad = int(self.engine.tokenizer.pad_token_id)
        longest = max(len(self.rows[i].prompt_ids) for i in self.active)
        ids = torch.full((len(self.active), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(self.active), longest), dtype=torch.long)
        for n, i in enumerate(self.active):
            p = self.rows[i].prompt_ids
            ids[n, longest - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[n, longest - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(dev), mask.to(dev), positions.to(dev)

    def step(self) -> list[StepEvent]:
        """Generate one token for every active row.

        Returns:
            One :class:`StepEvent` per row that was active (finished rows carry their reason).
        """
        self._drop([i for i in self.active if self.rows[i].cancelled])
        if not self.active:
            return []
        if self._mask is None:
            # Rows sorted by adapter lie grouped in the batch: the batched LoRA then regroups
            # them by a view instead of two copies per layer (RowPlan.aligned). Events name
            # rows by index, so the order in the batch is free.
            self.active.sort(key=lambda i: self.rows[i].slot)
        engine = self.engine
        active_rows = [self.rows[i] for i in self.active]
        if self._mask is None:
            ids, mask, positions = self._prefill_inputs()
        else:
            assert self._last is not None and self._positions is not None
            ids = self._last.unsqueeze(1)
            ones = torch.ones((len(self.active), 1), dtype=torch.long, device=engine.device)
            mask = torch.cat([self._mask, ones], dim=1)
            positions = self._positions[:, -1:] + 1
        logits = engine.forward_logits(active_rows, self.cache, ids, mask, positions)
        self._mask, self._positions = mask, positions
        tokens = self._choose(logits, active_rows)
        self._last = tokens.to(engine.device)
        events: list[StepEvent] = []
        finished: list[int] = []
        for n, i in enumerate(self.active):
            events.append(self._advance(i, self.rows[i], int(tokens[n])))
            if self.rows[i].finish_reason is not None:
                finished.append(i)
        self._drop(finished)
        return events

    def _choose(self, logits: torch.Tensor, rows: list[GenerationRow]) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        out = greedy.cpu()
        for n, row in enumerate(rows):
            if row.temperature <= 0:
                continue
            # Shifted so the largest is 0 before dividing: any temperature > 0 stays finite
            # (logits / 1e-40 would overflow to inf and make the softmax nan).
            shifted = logits[n] - logits[n].max()
            probs = torch.softmax(shifted / row.temperature, dim=-1)
            if row.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < row.top_p
                keep[0] = True
                filtered = torch.zeros_like(probs)
                filtered[order[keep]] = sorted_p[keep]
                probs = filtered / filtered.sum()
            out[n] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return out

    def _advance(self, i: int, row: GenerationRow, token: int) -> StepEvent:
        tok = self.engine.tokenizer
        row.token_ids.append(token)
        ids = row.token_ids
        finish: FinishReason | None = None
        if token in self.engine.eos_token_ids:
            finish = "stop"
        elif len(ids) >= row.max_tokens:
            finish = "length"
        # Incremental detokenisation with prefix/read offsets (as in vLLM): decode only the
        # last few tokens each step and commit text once it no longer ends in an incomplete
        # UTF-8 sequence (U+FFFD); on the last step commit whatever there is. Decoding the
        # whole sequence every step would be quadratic in the completion length.
        prefix = tok.decode(ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        new = tok.decode(ids[row.prefix_offset :], skip_special_tokens=True)
        if len(new) > len(prefix) and (finish is not None or not new.endswith("\ufffd")):
            row.text += new[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
        text = row.text
        cut = len(text)
        for stop in row.stop:
            pos = text.find(stop)
            if pos != -1 and pos < cut:
                cut = pos
                finish = "stop"
        safe = cut if finish is not None else len(text) - _held_back(text, row.stop)
        delta = text[row.emitted : safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        if finish is not None:
            row.finish_reason = finish
            row.text = text[:cut]
        return StepEvent(row=i, token_id=token, text=delta, finish_reason=finish)

    def can_join(self) -> bool:
        """Whether rows may join this batch between steps (its KV cache can be merged).

        True before the first step and, after it, when every cache layer is a plain
        ``DynamicLayer`` (sliding-window or linear-attention layers are not merged).
        """
        from transformers.cache_utils import DynamicLayer

        if self._mask is None:
            return True
        if self.cache is None:
            return False
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def add(self, rows: list[GenerationRow]) -> list[StepEvent]:
        """Join ``rows`` to the running batch at a step boundary (continuous batching).

        The new rows are prefilled on their own (with their adapters), then their KV cache,
        attention mask and positions are merged into the batch: both sides are left-padded
        to the longer sequence (padding is masked out) and stacked on the batch dimension.
        Their rows are numbered after the existing ones.

        Args:
            rows: Requests to add.

        Returns:
            The events of the new rows' first generated token (row indices in this batch).

        Raises:
            RuntimeError: :meth:`can_join` is false.
        """
        if not self.can_join():
            raise RuntimeError("this batch's KV cache cannot take new rows")
        offset = len(self.rows)
        self.rows.extend(rows)
        if self._mask is None:  # not started: the rows simply take part in the prefill
            self.active.extend(range(offset, offset + len(rows)))
            return []
        joining = GenerationBatch(self.engine, rows)
        events = joining.step()
        for event in events:
            event.row += offset
        if joining.active:
            self._merge(joining, offset)
        return events

    def _merge(self, other: GenerationBatch, offset: int) -> None:
        assert self._mask is not None and other._mask is not None
        assert self._positions is not None and other._positions is not None
        assert self._last is not None and other._last is not None
        length, other_length = self._mask.shape[1], other._mask.shape[1]
        total = max(length, other_length)

        def left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            """``t`` with ``n`` zeros prepended along ``dim`` (masked-out padding)."""
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [
                    left_pad(mine.keys, total - length, -2),
                    left_pad(theirs.keys, total - other_length, -2),
                ]
            )
            mine.values = torch.cat(
                [
                    left_pad(mine.values, total - length, -2),
                    left_pad(theirs.values, total - other_length, -2),
                ]
            )
        self._mask = torch.cat(
            [
                left_pad(self._mask, total - length, 1),
                left_pad(other._mask, total - other_length, 1),
            ]
        )
        self._positions = torch.cat([self._positions[:, -1:], other._positions[:, -1:]])
        self._last = torch.cat([self._last, other._last])
        self.active.extend(offset + i for i in other.active)
        self._trim_left()

    def _trim_left(self) -> None:
        """Drop KV columns that are padding for every active row.

        Rows leave and join a long-running batch, so without this the shared KV length (and the
        attention cost of every step) would keep growing with the batch's age instead of the
        longest live sequence. Positions are explicit, so nothing else changes.
        """
        if self._mask is None or not self.active or not self.can_join():
            return
        used = self._mask.any(dim=0)
        first = int(used.to(torch.int8).argmax())
        if first == 0:
            return
        self._mask = self._mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]

    def _drop(self, rows: list[int]) -> None:
        if not rows:
            return
        keep = [n for n, i in enumerate(self.active) if i not in set(rows)]
        self.active = [self.active[n] for n in keep]
        if self._mask is None:
            return
        if not self.active:
            self.cache = None
            self._mask = self._positions = self._last = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.engine.device)
        self.cache.batch_select_indices(index)
        assert self._positions is not None and self._last is not None
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last = self._last.index_select(0, index)
        self._trim_left()
