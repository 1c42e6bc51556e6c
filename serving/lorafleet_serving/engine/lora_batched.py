"""Batched LoRA: one forward pass in which every row uses its own adapter (BGMV in plain torch).

The idea is Punica's "batched gather matrix-vector" (BGMV) kernel and S-LoRA's unified adapter
memory (Chen et al., *Punica: Multi-Tenant LoRA Serving*, 2023; Sheng et al., *S-LoRA: Serving
Thousands of Concurrent LoRA Adapters*, 2023): for every adapted linear layer the resident
adapters' ``A`` and ``B`` matrices are stacked into one tensor each, indexed by a *slot*; a
batch carries one slot index per row, and the LoRA delta of the whole mixed batch is::

    delta[n] = (x[n] @ A[slot[n]].T) @ B[slot[n]].T        x[n]: [T, in], A: [r, in], B: [out, r]

The stacks are stored transposed (``A.T``: ``[slots, in, r]``, ``B.T``: ``[slots, r, out]``), so
they are the matmul operands as they lie. A mixed batch is computed per *adapter*, not per row
(Punica's SGMV, "segmented gather"): its rows are grouped by slot into a padded
``[groups, rows_per_group * T, in]`` tensor (one ``index_select`` of the activations), each
group is multiplied by its own adapter's matrices in two ``torch.bmm``, and the results go back
to their rows (one more ``index_select``). Each adapter's matrices are read once per layer
whatever the batch size — a per-row gather would copy them once per row (at batch 32 with LoRA
on every linear layer, more bytes than the base weights) — and when the slots in the batch are
consecutive the stacks are used as a slice, without any copy. Measured in
``benchmarks/serving.py``.

Slot 0 is all zeros and means "bare base". Ranks are zero-padded to the largest resident rank
(padding contributes exactly zero), and each adapter's scaling (``lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with rsLoRA, as peft computed it per layer) is folded into its ``B``.

Plain LoRA on linear layers comes straight from the adapter's files
(:func:`~.plain_lora.plain_lora_layers`, :meth:`BatchedLoRA.add_layers`); for the variants
peft loads the adapter and injects its ``LoraLayer`` wrappers, and this module copies the
weights out of those layers into the stacks (:meth:`BatchedLoRA.add`) and keeps the peft layers
disabled (so they run only their base layer). Either way the delta is added by a forward hook
on the adapted module (or, once peft wrapped it, on the wrapper or its base layer). peft's own
``adapter_names`` mixed-batch path loops over adapters in Python per layer; this path costs
two ``torch.bmm`` and two ``index_select`` per layer whatever the number of distinct adapters
in the batch.

The peft variants ride on the same step, each matching peft's own layer code:

- **LoRA bias** (``lora_bias``): ``lora_B`` has a bias; ``bias * scaling`` is a per-slot
  vector ``[capacity + 1, out]`` gathered per row and added.
- **DoRA** (``use_dora``; ``peft/tuners/lora/dora.py``, ``DoraLinearLayer``): the output is
  ``m_s * (W x + s·B A x) + b`` with ``m_s = magnitude / ||W + s·B A||`` per output row. At
  inference ``m_s`` is constant, computed once at load with peft's own ``get_weight_norm``
  and stored as a per-slot vector (ones for plain slots), so with ``out = W x + b`` and
  ``delta = s·B A x`` the hook returns ``out + (m_s - 1) * (out - b) + m_s * delta``.
- **Embedding LoRA** (``lora_embedding_A/B``): ``delta[n, t] = B[slot] @ A[slot][:, id[n, t]]``
  — a gather of ``A``'s columns (rows of the stored ``A.T``) by token id instead of a matmul.
- **modules_to_save** of any module: the adapter's own copy of that module (built at load);
  a forward hook on the base module replaces the output rows of that adapter's rows with the
  copy's output on those rows (one extra module call per distinct adapter in the batch).
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

from .row_plan import RowPlan


@dataclass
class LayerWeights:
    """One layer's weights of an adapter being added, before they go into the stacks.

    Attributes:
        qualname: The adapted module's qualified name in the model.
        a: ``A``, ``[r, in_features]`` (embeddings: ``[r, num_embeddings]``), any float dtype.
        b: ``B`` times the layer's scaling, ``[out_features, r]``.
        embedding: True for LoRA on an ``nn.Embedding``.
        bias: The ``lora_B`` bias times scaling (``lora_bias``), ``[out_features]``.
        mag: DoRA's ``magnitude / ||W + s·B·A||`` per output row, ``[out_features]``.
        base_bias: The base layer's own bias (DoRA only).
    """

    qualname: str
    a: torch.Tensor
    b: torch.Tensor
    embedding: bool = False
    bias: torch.Tensor | None = None
    mag: torch.Tensor | None = None
    base_bias: torch.Tensor | None = None


@dataclass
class _StackedLayer:
    """The stacked A/B matrices of one adapted linear layer, stored transposed.

    ``a``: ``A.T`` per slot, ``[capacity + 1, in_features, r_max]``; ``b``: ``B.T`` per slot,
    ``[capacity + 1, r_max, out_features]`` (scaling folded in); ``None`` until an adapter that
    targets this layer is loaded.
    """

    in_features: int
    out_features: int
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    ranks: dict[int, int] = field(default_factory=dict)  # slot -> that adapter's rank here
    #: ``lora_B`` biases (``lora_bias``), scaling folded in: ``[capacity + 1, out_features]``.
    bias: torch.Tensor | None = None
    #: DoRA's ``magnitude / ||W + s·B·A||`` per output row, ones for plain slots:
    #: ``[capacity + 1, out_features]``.
    mag: torch.Tensor | None = None
    #: The base layer's own bias (DoRA scales the base output without it), or None.
    base_bias: torch.Tensor | None = None
    #: True for an ``nn.Embedding`` (``a``: ``[cap+1, num_embeddings, r]``, input: token ids).
    embedding: bool = False
    bias_slots: set[int] = field(default_factory=set)
    dora_slots: set[int] = field(default_factory=set)

    @property
    def rank(self) -> int:
        """Padded rank of the stacks (0 before allocation)."""
        return 0 if self.a is None else self.a.shape[2]

    def nbytes(self) -> int:
        """Bytes held by this layer's stacks."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.a, self.b, self.bias, self.mag)
            if t is not None
        )


def _found_in(qualname: str, module: LoraLayer, key: str) -> LayerWeights | None:
    """Peft adapter ``key``'s weights in one ``LoraLayer`` (``None`` if it has none there),
    scaling folded into ``B`` (and the ``lora_B`` bias); for DoRA also the per-row magnitude
    scale, computed once with peft's own weight norm.

    Raises:
        ValueError: DoRA on an embedding, or LoRA on a layer that is neither an embedding nor
            linear (e.g. a convolution).
    """
    if key in module.lora_embedding_A:
        if module.use_dora.get(key, False):
            raise ValueError(f"DoRA on the embedding layer {qualname} is not served")
        return LayerWeights(
            qualname,
            a=module.lora_embedding_A[key].detach(),  # [r, num_embeddings]
            b=module.lora_embedding_B[key].detach() * module.scaling[key],
            embedding=True,
        )
    if key not in module.lora_A:
        return None
    if not isinstance(module.lora_A[key], nn.Linear):
        raise ValueError(f"LoRA on {type(module).__name__} {qualname} is not served")
    scaling = module.scaling[key]
    lora_a, lora_b = module.lora_A[key], module.lora_B[key]
    item = LayerWeights(qualname, a=lora_a.weight.detach(), b=lora_b.weight.detach() * scaling)
    if lora_b.bias is not None:  # lora_bias: lora_B(h) * scaling adds bias * scaling
        item.bias = lora_b.bias.detach() * scaling
    if module.use_dora.get(key, False):
        # peft's DoRA (tuners/lora/dora.py, DoraLinearLayer.forward): the output is
        # m_s * (W x + s·B·A x) + bias with m_s = magnitude / ||W + s·B·A|| per output
        # row, constant at inference, so it is computed once here with peft's own norm.
        dora = module.lora_magnitude_vector[key]
        base = module.get_base_layer()
        with torch.no_grad():
            lora_weight = lora_b.weight @ lora_a.weight
            norm = dora.get_weight_norm(base.weight, lora_weight, scaling)
        item.mag = (dora.weight.detach() / norm.detach()).reshape(-1)
        item.base_bias = base.bias
    return item


class BatchedLoRA:
    """Slot-indexed stacks of the resident adapters' LoRA weights, applied per row.

    Not thread-safe by itself: the engine calls it from its single worker thread.

    Args:
        capacity: Maximum number of adapters resident at once (slots ``1..capacity``).
        dtype: Compute dtype of the stacks (the base model's dtype).
        device: Device of the stacks (the base model's device).
    """

    def __init__(self, capacity: int, *, dtype: torch.dtype, device: torch.device) -> None:
        if capacity < 1:
            raise ValueError(f"BatchedLoRA: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.device = device
        self._layers: dict[str, _StackedLayer] = {}
        self._hooked: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._slots: dict[str, int] = {}
        #: modules_to_save copies: qualified module name -> slot -> the adapter's module.
        self._saved: dict[str, dict[int, nn.Module]] = {}
        self._plan = threading.local()
        self._plans: OrderedDict[tuple[int, ...], RowPlan] = OrderedDict()

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
        """Bytes held by all stacks (0 when no adapter is resident)."""
        return sum(layer.nbytes() for layer in list(self._layers.values()))

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
            if layer.bias is not None:
                layer.bias = self._vector(layer.bias, layer.out_features, 0.0)
            if layer.mag is not None:
                layer.mag = self._vector(layer.mag, layer.out_features, 1.0)

    # ------------------------------------------------------------------ load / unload

    def add(
        self,
        name: str,
        model: nn.Module,
        *,
        peft_name: str | None = None,
        saved_modules: dict[str, nn.Module] | None = None,
    ) -> int:
        """Copy adapter ``name`` out of the peft ``LoraLayer`` wrappers of ``model`` into a slot.

        Hooks every ``LoraLayer`` not hooked yet and disables the peft layers (they then run
        only their base layer; the hook adds the batched delta).

        Args:
            name: Adapter name (the key of its slot).
            model: The model holding peft's ``LoraLayer`` modules.
            peft_name: The adapter's name inside peft, if different from ``name``.
            saved_modules: The adapter's own copies of whole modules (``modules_to_save``),
                by qualified module name: rows of this adapter get the copy's output instead
                of the module's (a forward hook swaps them per row).

        Returns:
            The slot assigned to the adapter.

        Raises:
            ValueError: Already stacked, no free slot, the adapter is not in any layer, or it uses
                a variant this path does not implement (DoRA on embeddings, LoRA on conv layers).
        """
        if name in self._slots:
            raise ValueError(f"BatchedLoRA: adapter {name!r} is already resident")
        found = self._collect(model, peft_name or name)
        # Any layer peft injected must stay disabled, including ones of other adapters.
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(False)
        return self._add(name, model, found, saved_modules or {})

    def add_layers(
        self,
        name: str,
        model: nn.Module,
        layers: list[LayerWeights],
        *,
        saved_modules: dict[str, nn.Module] | None = None,
    ) -> int:
        """Put an adapter's matrices, read without peft, into a slot (plain LoRA on linear layers;
        :func:`~.plain_lora.plain_lora_layers`), hooking the modules they adapt.

        Args:
            name: Adapter name (the key of its slot).
            model: The base model; each ``layers[i].qualname`` names one of its modules (a plain
                layer, or a peft wrapper left from an earlier load: the hook is the same).
            layers: The adapter's matrices, scaling folded into ``B``.
            saved_modules: As for :meth:`add`.

        Returns:
            The slot assigned to the adapter.

        Raises:
            ValueError: Already stacked, no free slot, or no layers and no module copies.
        """
        if name in self._slots:
            raise ValueError(f"BatchedLoRA: adapter {name!r} is already resident")
        for item in layers:
            self._hook(item.qualname, model.get_submodule(item.qualname))
        return self._add(name, model, layers, saved_modules or {})

    def _add(
        self,
        name: str,
        model: nn.Module,
        found: list[LayerWeights],
        saved_modules: dict[str, nn.Module],
    ) -> int:
        """Store an adapter's layers and module copies in the lowest free slot.

        Raises:
            ValueError: No free slot, or no layers and no module copies.
        """
        slot = self._free_slot()
        if not found and not saved_modules:
            raise ValueError(f"adapter {name!r} adapts no layer of the model")
        for item in found:
            self._store(slot, item)
        self._add_saved(slot, model, saved_modules)
        self._slots[name] = slot
        self._invalidate()
        return slot

    def _free_slot(self) -> int:
        """The lowest slot no resident adapter holds.

        Raises:
            ValueError: All ``capacity`` slots are in use.
        """
        used = set(self._slots.values())
        slot = next((s for s in range(1, self.capacity + 1) if s not in used), None)
        if slot is None:
            raise ValueError(f"BatchedLoRA: all {self.capacity} adapter slots are in use")
        return slot

    def _collect(self, model: nn.Module, key: str) -> list[LayerWeights]:
        """Hook every ``LoraLayer`` of ``model`` and take out peft adapter ``key``'s weights;
        the layers holding them are disabled (they run only their base layer).

        Raises:
            ValueError: A variant this path does not implement (see :func:`_found_in`).
        """
        found: list[LayerWeights] = []
        for qualname, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            self._hook(qualname, module)
            item = _found_in(qualname, module, key)
            if item is not None:
                found.append(item)
                module.enable_adapters(False)
        return found

    def _store(self, slot: int, item: LayerWeights) -> None:
        """Write one layer's weights of an adapter into ``slot`` of that layer's stacks,
        allocating or widening (rank) the stacks first when needed."""
        layer = self._layers.get(item.qualname)
        if layer is None:
            layer = _StackedLayer(
                in_features=item.a.shape[1],  # peft's A: [r, in]
                out_features=item.b.shape[0],  # peft's B: [out, r]
                embedding=item.embedding,
            )
            self._layers[item.qualname] = layer
        r = item.a.shape[0]
        if layer.a is None or r > layer.rank:
            self._reallocate(layer, self.capacity, max(r, layer.rank))
        assert layer.a is not None and layer.b is not None
        layer.a[slot].zero_()
        layer.b[slot].zero_()
        layer.a[slot, :, :r].copy_(item.a.T.to(self.dtype))
        layer.b[slot, :r].copy_(item.b.T.to(self.dtype))
        layer.ranks[slot] = r
        if item.bias is not None:
            layer.bias = self._vector(layer.bias, layer.out_features, 0.0)
            layer.bias[slot].copy_(item.bias.to(self.dtype))
            layer.bias_slots.add(slot)
        if item.mag is not None:
            layer.mag = self._vector(layer.mag, layer.out_features, 1.0)
            layer.mag[slot].copy_(item.mag.to(self.dtype))
            layer.dora_slots.add(slot)
            layer.base_bias = item.base_bias

    def _add_saved(self, slot: int, model: nn.Module, saved_modules: dict[str, nn.Module]) -> None:
        """Register an adapter's own module copies for ``slot`` and hook the base modules.

        Raises:
            ValueError: ``model`` has no module of that name.
        """
        for qualname, copy in saved_modules.items():
            original = dict(model.named_modules()).get(qualname)
            if original is None:
                raise ValueError(f"modules_to_save: the model has no module {qualname!r}")
            self._saved.setdefault(qualname, {})[slot] = copy
            self._hook_saved(qualname, original)

    def remove(self, name: str) -> None:
        """Zero and free the slot of ``name``; release a layer's stacks when it holds none.

        Args:
            name: Adapter name.

        Raises:
            KeyError: The adapter is not resident.
        """
        slot = self._slots.pop(name)
        self._invalidate()
        for copies in self._saved.values():
            copies.pop(slot, None)
        for layer in self._layers.values():
            if slot in layer.ranks:
                del layer.ranks[slot]
                assert layer.a is not None and layer.b is not None
                layer.a[slot].zero_()
                layer.b[slot].zero_()
            if slot in layer.bias_slots:
                layer.bias_slots.discard(slot)
                assert layer.bias is not None
                layer.bias[slot].zero_()
            if slot in layer.dora_slots:
                layer.dora_slots.discard(slot)
                assert layer.mag is not None
                layer.mag[slot].fill_(1.0)
            if not layer.bias_slots:
                layer.bias = None
            if not layer.dora_slots:
                layer.mag = None
            if not layer.ranks:
                layer.a = layer.b = None
            elif layer.rank > (need := max(layer.ranks.values())):
                self._reallocate(layer, self.capacity, need)

    def _invalidate(self) -> None:
        self._plans.clear()

    def _vector(self, old: torch.Tensor | None, size: int, fill: float) -> torch.Tensor:
        """A ``[capacity + 1, size]`` per-slot vector stack filled with ``fill``, keeping
        the rows of ``old`` that still fit."""
        new = torch.full((self.capacity + 1, size), fill, dtype=self.dtype, device=self.device)
        if old is not None:
            keep = min(new.shape[0], old.shape[0])
            new[:keep] = old[:keep]
        return new

    def _reallocate(self, layer: _StackedLayer, capacity: int, rank: int) -> None:
        self._invalidate()
        a = torch.zeros(capacity + 1, layer.in_features, rank, dtype=self.dtype, device=self.device)
        b = torch.zeros(
            capacity + 1, rank, layer.out_features, dtype=self.dtype, device=self.device
        )
        if layer.a is not None and layer.b is not None:
            keep_s = min(capacity + 1, layer.a.shape[0])
            keep_r = min(rank, layer.rank)
            a[:keep_s, :, :keep_r] = layer.a[:keep_s, :, :keep_r]
            b[:keep_s, :keep_r] = layer.b[:keep_s, :keep_r]
        layer.a, layer.b = a, b

    # ------------------------------------------------------------------ forward

    def _hook(self, qualname: str, module: nn.Module) -> None:
        if qualname in self._hooked:
            return

        def hook(_mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            """Forward hook: the layer's output plus this batch's per-row LoRA delta."""
            return self._apply(qualname, args[0], output)

        self._hooked[qualname] = module.register_forward_hook(hook)

    def _hook_saved(self, qualname: str, module: nn.Module) -> None:
        key = f"saved:{qualname}"
        if key in self._hooked:
            return

        def hook(_mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            """Forward hook: rows of adapters with their own copy get the copy's output."""
            return self._apply_saved(qualname, args[0], output)

        self._hooked[key] = module.register_forward_hook(hook)

    def _apply_saved(
        self, qualname: str, x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor | None:
        plan: RowPlan | None = getattr(self._plan, "value", None)
        copies = self._saved.get(qualname)
        if plan is None or not copies or plan.slots.isdisjoint(copies):
            return None
        if plan.single is not None:
            return copies[plan.single](x)
        out = out.clone()
        for slot, copy in copies.items():
            if slot in plan.slots:
                rows = (plan.index == slot).nonzero().view(-1)
                out[rows] = copy(x[rows]).to(out.dtype)
        return out

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
        if plan is None:
            plan = RowPlan.build(list(slots), self.device)
            self._plans[key] = plan
            while len(self._plans) > 4:  # a few batches may interleave their steps
                self._plans.popitem(last=False)
        self._plans.move_to_end(key)
        previous = getattr(self._plan, "value", None)
        self._plan.value = plan
        try:
            yield
        finally:
            self._plan.value = previous

    def _apply(self, qualname: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        plan: RowPlan | None = getattr(self._plan, "value", None)
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
        if layer.embedding:
            return out + self._embedding_delta(layer, plan, x).to(out.dtype)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        plain = layer.bias is None and layer.mag is None
        if plain and out.dtype == self.dtype and out.is_contiguous():
            return self._accumulate(layer, plan, x, out)
        if plan.single is not None:
            # Uniform batch: plain matmuls with one adapter's matrices, no grouping.
            k = plan.single
            delta = (x @ layer.a[k]) @ layer.b[k]
        else:
            delta = self._grouped_delta(layer, plan, x)
        if layer.bias is not None and not plan.slots.isdisjoint(layer.bias_slots):
            delta = delta + self._per_row(layer.bias, plan, x.dim())
        if layer.mag is not None and not plan.slots.isdisjoint(layer.dora_slots):
            # DoRA rows: m_s * (W x + delta) + bias == out + (m_s - 1) * (out - bias) + m_s * delta
            scale = self._per_row(layer.mag, plan, x.dim())
            base = out if layer.base_bias is None else out - layer.base_bias
            return out + ((scale - 1) * base.to(self.dtype) + scale * delta).to(out.dtype)
        return out + delta.to(out.dtype)

    @staticmethod
    def _stacks(layer: _StackedLayer, plan: RowPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's groups' ``A.T`` ``[G, in, r]`` and ``B.T`` ``[G, r, out]``: when the slots
        are consecutive, a slice of the stacks (a view, kept in the plan for the next steps; a
        plan is dropped whenever the stacks change), else gathered (a copy, made per step and
        not kept: it would hold a second copy of those adapters)."""
        assert layer.a is not None and layer.b is not None
        if plan.first is None:
            return layer.a.index_select(0, plan.groups), layer.b.index_select(0, plan.groups)
        views = plan.operands.get(id(layer))
        if views is None:
            end = plan.first + plan.groups.shape[0]
            views = plan.operands[id(layer)] = layer.a[plan.first : end], layer.b[plan.first : end]
        return views

    def _accumulate(
        self, layer: _StackedLayer, plan: RowPlan, x: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """Plain LoRA added into the layer's own output, in place: ``out += (x A.T) B.T`` by
        ``addmm_`` (one adapter) or ``baddbmm_`` per group when the rows lie grouped
        (:attr:`RowPlan.aligned`), else the padded regrouping of :meth:`_grouped_delta`.

        Args:
            layer: The layer's stacks (allocated, no bias or DoRA slots).
            plan: The batch's routing.
            x: ``[N, T, in]`` or ``[N, in]`` activations in the stacks' dtype.
            out: The layer's output ``[N, T, out]`` or ``[N, out]``, contiguous, in the stacks'
                dtype (a fresh tensor of this forward pass: nothing else holds it).

        Returns:
            ``out``, with the delta added.
        """
        assert layer.a is not None and layer.b is not None
        if plan.single is not None:
            k = plan.single
            flat = x.reshape(-1, x.shape[-1])
            out.view(-1, layer.out_features).addmm_(flat @ layer.a[k], layer.b[k])
            return out
        if not plan.aligned:
            return out.add_(self._grouped_delta(layer, plan, x))
        a, b = self._stacks(layer, plan)
        groups = a.shape[0]
        grouped = x.reshape(groups, -1, x.shape[-1])  # rows lie grouped: a view
        out.view(groups, -1, layer.out_features).baddbmm_(torch.bmm(grouped, a), b)
        return out

    @classmethod
    def _grouped_delta(cls, layer: _StackedLayer, plan: RowPlan, x: torch.Tensor) -> torch.Tensor:
        """The LoRA delta of a mixed batch, adapter by adapter (see the module docstring).

        Args:
            layer: The layer's stacks (allocated).
            plan: The batch's routing.
            x: ``[N, T, in]`` or ``[N, in]`` activations in the stacks' dtype.

        Returns:
            ``delta`` shaped like ``x`` with ``out_features`` last.
        """
        a, b = cls._stacks(layer, plan)
        groups = a.shape[0]
        tokens = x.shape[1] if x.dim() == 3 else 1
        grouped = x.index_select(0, plan.src).reshape(groups, plan.per_group * tokens, -1)
        out = torch.bmm(torch.bmm(grouped, a), b)  # [G, per_group * T, out]
        out = out.reshape(groups * plan.per_group, *x.shape[1:-1], layer.out_features)
        return out.index_select(0, plan.dst)

    @staticmethod
    def _per_row(vectors: torch.Tensor, plan: RowPlan, dims: int) -> torch.Tensor:
        """Each row's slot vector, shaped to broadcast over ``[N, T, out]`` (or ``[N, out]``)."""
        if plan.single is not None:
            return vectors[plan.single]
        rows = vectors.index_select(0, plan.index)
        return rows.unsqueeze(1) if dims == 3 else rows

    def _embedding_delta(
        self, layer: _StackedLayer, plan: RowPlan, ids: torch.Tensor
    ) -> torch.Tensor:
        """LoRA on an embedding (peft ``lora.Embedding``): ``onehot(ids) @ A.T @ B.T``, i.e.
        a lookup in the stored ``A.T`` per row's slot, then ``B``. ``ids``: ``[N, T]`` int64 ->
        ``[N, T, dim]``."""
        assert layer.a is not None and layer.b is not None
        if plan.single is not None:
            k = plan.single
            return nn.functional.embedding(ids, layer.a[k]) @ layer.b[k]
        after_a = layer.a[plan.index.view(-1, *([1] * (ids.dim() - 1))), ids]  # [N, T, r]
        b_t = layer.b.index_select(0, plan.index)  # [N, r, dim]
        n = ids.shape[0]
        return torch.bmm(after_a.reshape(n, -1, layer.rank), b_t).view(
            *ids.shape, layer.out_features
        )
