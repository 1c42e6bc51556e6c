"""How one forward pass of a mixed batch is routed: each row's LoRA slot, grouped by slot.

:class:`RowPlan` is what :class:`~.lora_batched.BatchedLoRA` computes once per distinct
row-to-slot assignment (a generation batch runs many decode steps with the same rows) and its
hooks read in every adapted layer: the slot per row for per-row vectors, and the grouping of the
rows by slot for the adapter-by-adapter matmuls (Punica's SGMV; see that module's docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RowPlan:
    """Per-forward routing of a batch: slot per row and its grouping by slot.

    Made once per distinct row-to-slot assignment (a generation batch runs many decode steps
    with the same rows) and reused until the rows or the resident adapters change.

    Attributes:
        index: ``[N]`` int64, the slot of each row.
        slots: Distinct slots present (0 if any base row).
        single: The only slot when every row uses the same one.
        groups: ``[G]`` int64, the distinct slots in ascending order (the groups).
        first: The first slot when ``groups`` are consecutive (the stacks are then sliced,
            not gathered), else ``None``.
        per_group: Rows per group after padding (the largest group's size).
        src: ``[G * per_group]`` int64: the batch row each padded position reads (padding
            repeats a row of the group; its result is never read).
        dst: ``[N]`` int64: each row's position in the padded layout.
        aligned: True when the rows already lie grouped (sorted by slot, every group the same
            size): the padded layout is the batch itself, ``src`` and ``dst`` are the identity
            and the activations are regrouped by a view, without a copy.
        operands: Per adapted layer (by the id of its stacks' record), views of that layer's
            ``A.T`` and ``B.T`` slices for this batch's groups (consecutive slots only), made by
            :class:`~.lora_batched.BatchedLoRA` on the first step and reused by the next ones.
    """

    index: torch.Tensor
    slots: frozenset[int]
    single: int | None
    groups: torch.Tensor
    first: int | None
    per_group: int
    src: torch.Tensor
    dst: torch.Tensor
    aligned: bool = False
    operands: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, slots: list[int], device: torch.device) -> RowPlan:
        """The routing of ``slots`` (one per row), grouped by slot."""
        distinct = sorted(set(slots))
        members: dict[int, list[int]] = {s: [] for s in distinct}
        for row, slot in enumerate(slots):
            members[slot].append(row)
        per_group = max(len(rows) for rows in members.values())
        src: list[int] = []
        dst = [0] * len(slots)
        for g, slot in enumerate(distinct):
            rows = members[slot]
            for j, row in enumerate(rows):
                dst[row] = g * per_group + j
            src.extend(rows + [rows[0]] * (per_group - len(rows)))
        consecutive = distinct == list(range(distinct[0], distinct[0] + len(distinct)))

        def longs(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            index=longs(slots),
            slots=frozenset(distinct),
            single=distinct[0] if len(distinct) == 1 else None,
            groups=longs(distinct),
            first=distinct[0] if consecutive else None,
            per_group=per_group,
            src=longs(src),
            dst=longs(dst),
            aligned=src == list(range(len(slots))),
        )
