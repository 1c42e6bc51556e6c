"""Batched LoRA: one forward pass in which every row uses its own adapter (BGMV in plain torch).

The idea is Punica's "batched gather matrix-vector" (BGMV) kernel and S-LoRA's unified adapter
memory (Chen et al., *Punica: Multi-Tenant LoRA Serving*, 2023; Sheng et al., *S-LoRA: Serving
Thousands of Concurrent LoRA Adapters*, 2023): for every adapted linear layer the resident
adapters' ``A`` and ``B`` matrices are stacked into one tensor each, indexed by a *slot*; a
batch carries one slot index per row, and the LoRA delta of the whole mixed batch is two
batched matmuls over the gathered matrices::

    delta[n] = (x[n] @ A[slot[n]].T) @ B[slot[n]].T        x[n]: [T, in], A: [r, in], B: [out, r]

Slot 0 is all zeros and means "bare base". Ranks are zero-padded to the largest resident rank
(padding contributes exactly zero), and each adapter's scaling (``lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with rsLoRA, as peft computed it per layer) is folded into its ``B``.

peft loads the adapter files and injects its ``LoraLayer`` wrappers; this module copies the
weights out of those layers into the stacks, keeps the peft layers disabled (so they run only
their base layer), and adds the delta with a forward hook on each wrapper. peft's own
``adapter_names`` mixed-batch path loops over adapters in Python per layer; this path costs
two ``torch.bmm`` per layer whatever the number of distinct adapters in the batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

BASE_SLOT = 0


@dataclass
class _RowPlan:
    """Per-forward routing: slot per row, shortcuts, and the gathered weights of a mixed batch.

    A generation batch runs many decode steps with the same rows, so the per-row gathered
    matrices (``A[slot[n]]``, ``B[slot[n]]``, transposed for ``bmm``) are computed once per layer
    and reused while the rows and the stacks do not change, within the owner's byte budget.
    """

    index: torch.Tensor  # [N] int64 slot per row, on the model's device
    slots: frozenset[int]  # distinct slots present (including 0 if any base row)
    single: int | None  # the only slot when every row uses the same one
    version: int  # BatchedLoRA._version when made; stale after any load/unload
    nbytes: int = 0  # bytes of gathered weights this plan holds
    gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class _StackedLayer:
    """The stacked A/B matrices of one adapted linear layer.

    ``a``: ``[capacity + 1, r_max, in_features]``, ``b``: ``[capacity + 1, out_features, r_max]``
    (scaling folded in); ``None`` until an adapter that targets this layer is loaded.
    """

    in_features: int
    out_features: int
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    ranks: dict[int, int] = field(default_factory=dict)  # slot -> that adapter's rank here

    @property
    def rank(self) -> int:
        """Padded rank of the stacks (0 before allocation)."""
        return 0 if self.a is None else self.a.shape[1]

    def nbytes(self) -> int:
        """Bytes held by this layer's stacks."""
        if self.a is None or self.b is None:
            return 0
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()


class BatchedLoRA:
    """Slot-indexed stacks of the resident adapters' LoRA weights, applied per row.

    Not thread-safe by itself: the engine calls it from its single worker thread.

    Args:
        capacity: Maximum number of adapters resident at once (slots ``1..capacity``).
        dtype: Compute dtype of the stacks (the base model's dtype).
        device: Device of the stacks (the base model's device).
        gather_budget_bytes: Bytes of per-row gathered weights kept across decode steps, over
            all cached routings (beyond it, weights are gathered again in every step).
    """

    def __init__(
        self,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        gather_budget_bytes: int = 64 * 2**20,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"BatchedLoRA: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.device = device
        self._layers: dict[str, _StackedLayer] = {}
        self._hooked: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._slots: dict[str, int] = {}
        self._plan = threading.local()
        self._version = 0
        self._plans: OrderedDict[tuple[int, ...], _RowPlan] = OrderedDict()
        self.gather_budget_bytes = gather_budget_bytes
        self._gathered_bytes = 0

    # ------------------------------------------------------------------ registry of slots

    def slot_of(self, name: str) -> int:
        """The slot of a resident adapter.

        Args:
            name: Adapter name.

        Returns:
            Its slot (>= 1).

        Raises:
            KeyError: The adapter is not in the stacks.
        """
        return self._slots[name]

    def adapters(self) -> dict[str, int]:
        """Resident adapter names and their slots."""
        return dict(self._slots)

    def nbytes(self) -> int:
        """Bytes held by all stacks and cached gathered weights (0 when no adapter is resident)."""
        return sum(layer.nbytes() for layer in list(self._layers.values())) + self._gathered_bytes

    def set_capacity(self, capacity: int) -> None:
        """Change the number of slots, keeping resident adapters in their slots.

        Args:
            capacity: New maximum number of resident adapters.

        Raises:
            ValueError: ``capacity`` < 1 or below the highest slot in use (evict first).
        """
        if capacity < 1:
            raise ValueError(f"BatchedLoRA: capacity must be >= 1, got {capacity}")
        highest = max(self._slots.values(), default=0)
        if capacity < highest:
            raise ValueError(
                f"BatchedLoRA: cannot shrink to {capacity} slots while slot {highest} is in use"
            )
        if capacity == self.capacity:
            return
        self.capacity = capacity
        for layer in self._layers.values():
            if layer.a is not None:
                self._reallocate(layer, capacity, layer.rank)

    # ------------------------------------------------------------------ load / unload

    def add(self, name: str, model: nn.Module, *, peft_name: str | None = None) -> int:
        """Copy adapter ``name`` out of the peft ``LoraLayer`` wrappers of ``model`` into a slot.

        Hooks every ``LoraLayer`` not hooked yet and disables the peft layers (they then run
        only their base layer; the hook adds the batched delta).

        Args:
            name: Adapter name (the key of its slot).
            model: The model holding peft's ``LoraLayer`` modules.
            peft_name: The adapter's name inside peft, if different from ``name``.

        Returns:
            The slot assigned to the adapter.

        Raises:
            ValueError: Already stacked, no free slot, the adapter is not in any layer, or it uses
                a LoRA variant this path does not implement (DoRA, LoRA on embeddings, LoRA bias).
        """
        if name in self._slots:
            raise ValueError(f"BatchedLoRA: adapter {name!r} is already resident")
        used = set(self._slots.values())
        slot = next((s for s in range(1, self.capacity + 1) if s not in used), None)
        if slot is None:
            raise ValueError(f"BatchedLoRA: all {self.capacity} adapter slots are in use")
        key = peft_name or name
        found: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for qualname, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            self._hook(qualname, module)
            if key in module.lora_embedding_A:
                raise ValueError("LoRA on embedding layers is not supported by the batched path")
            if key not in module.lora_A:
                continue
            if module.use_dora.get(key, False):
                raise ValueError("DoRA adapters (use_dora) are not supported by the batched path")
            if module.lora_bias.get(key, False):
                raise ValueError("LoRA bias (lora_bias) is not supported by the batched path")
            a = module.lora_A[key].weight.detach()
            b = module.lora_B[key].weight.detach() * module.scaling[key]
            found.append((qualname, a, b))
            module.enable_adapters(False)
        if not found:
            raise ValueError(f"adapter {name!r} adapts no layer of the model")
        for qualname, a, b in found:
            layer = self._layers.get(qualname)
            if layer is None:
                layer = _StackedLayer(in_features=a.shape[1], out_features=b.shape[0])
                self._layers[qualname] = layer
            r = a.shape[0]
            if layer.a is None or r > layer.rank:
                self._reallocate(layer, self.capacity, max(r, layer.rank))
            assert layer.a is not None and layer.b is not None
            layer.a[slot].zero_()
            layer.b[slot].zero_()
            layer.a[slot, :r].copy_(a.to(self.dtype))
            layer.b[slot, :, :r].copy_(b.to(self.dtype))
            layer.ranks[slot] = r
        # Any layer peft injected must stay disabled, including ones of other adapters.
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(False)
        self._slots[name] = slot
        self._invalidate()
        return slot

    def remove(self, name: str) -> None:
        """Zero and free the slot of ``name``; release a layer's stacks when it holds none.

        Args:
            name: Adapter name.

        Raises:
            KeyError: The adapter is not resident.
        """
        slot = self._slots.pop(name)
        self._invalidate()
        for layer in self._layers.values():
            if slot in layer.ranks:
                del layer.ranks[slot]
                assert layer.a is not None and layer.b is not None
                layer.a[slot].zero_()
                layer.b[slot].zero_()
            if not layer.ranks:
                layer.a = layer.b = None
            elif layer.rank > (need := max(layer.ranks.values())):
                self._reallocate(layer, self.capacity, need)

    def _invalidate(self) -> None:
        self._version += 1
        self._plans.clear()
        self._gathered_bytes = 0

    def _reallocate(self, layer: _StackedLayer, capacity: int, rank: int) -> None:
        self._invalidate()
        a = torch.zeros(capacity + 1, rank, layer.in_features, dtype=self.dtype, device=self.device)
        b = torch.zeros(
            capacity + 1, layer.out_features, rank, dtype=self.dtype, device=self.device
        )
        if layer.a is not None and layer.b is not None:
            keep_s = min(capacity + 1, layer.a.shape[0])
            keep_r = min(rank, layer.rank)
            a[:keep_s, :keep_r] = layer.a[:keep_s, :keep_r]
            b[:keep_s, :, :keep_r] = layer.b[:keep_s, :, :keep_r]
        layer.a, layer.b = a, b

    # ------------------------------------------------------------------ forward

    def _hook(self, qualname: str, module: nn.Module) -> None:
        if qualname in self._hooked:
            return

        def hook(_mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            """Forward hook: the layer's output plus this batch's per-row LoRA delta."""
            return self._apply(qualname, args[0], output)

        self._hooked[qualname] = module.register_forward_hook(hook)

    @contextlib.contextmanager
    def rows(self, slots: list[int]) -> Iterator[None]:
        """Route the forward passes run inside this block: row ``n`` uses ``slots[n]``.

        Args:
            slots: One slot per batch row (``0`` = bare base), length = batch size.

        Yields:
            Nothing; the routing is undone on exit.
        """
        key = tuple(slots)
        plan = self._plans.get(key)
        if plan is None or plan.version != self._version:
            index = torch.tensor(slots, dtype=torch.long, device=self.device)
            distinct = frozenset(slots)
            single = next(iter(distinct)) if len(distinct) == 1 else None
            plan = _RowPlan(index, distinct, single, self._version)
            self._plans[key] = plan
            while len(self._plans) > 4:  # a few batches may interleave their steps
                _, dropped = self._plans.popitem(last=False)
                self._gathered_bytes -= dropped.nbytes
        self._plans.move_to_end(key)
        previous = getattr(self._plan, "value", None)
        self._plan.value = plan
        try:
            yield
        finally:
            self._plan.value = previous

    def _apply(self, qualname: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        plan: _RowPlan | None = getattr(self._plan, "value", None)
        layer = self._layers.get(qualname)
        if plan is None or layer is None or layer.a is None or layer.b is None:
            return None
        if plan.slots.isdisjoint(layer.ranks):
            return None
        if x.shape[0] != plan.index.shape[0]:
            raise RuntimeError(
                f"BatchedLoRA: layer {qualname} got a batch of {x.shape[0]} rows, "
                f"routing has {plan.index.shape[0]}"
            )
        x = x.to(self.dtype)
        if plan.single is not None:
            # Uniform batch: plain matmuls with one adapter's matrices, no gather.
            k = plan.single
            delta = nn.functional.linear(nn.functional.linear(x, layer.a[k]), layer.b[k])
        else:
            x3 = x if x.dim() == 3 else x.unsqueeze(1)
            gathered = plan.gathered.get(qualname)
            if gathered is None:
                # [N, in, r] and [N, r, out]: each row's own adapter matrices (BGMV gather).
                a_t = layer.a.index_select(0, plan.index).transpose(1, 2).contiguous()
                b_t = layer.b.index_select(0, plan.index).transpose(1, 2).contiguous()
                gathered = (a_t, b_t)
                size = (a_t.numel() + b_t.numel()) * a_t.element_size()
                if self._gathered_bytes + size <= self.gather_budget_bytes:
                    self._gathered_bytes += size
                    plan.nbytes += size
                    plan.gathered[qualname] = gathered
            delta = torch.bmm(torch.bmm(x3, gathered[0]), gathered[1])
            delta = delta.view(*x.shape[:-1], layer.out_features)
        return out + delta.to(out.dtype)
