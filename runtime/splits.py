"""Splitting the sequence: integer parts by weight (used everywhere), offsets, query rows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    import torch


def split_sizes(total: int, weights: Sequence[float]) -> list[int]:
    """Integer sizes proportional to `weights` that sum to `total` (largest remainder).

    Ties go to the lower index, so the result is deterministic.
    >>> split_sizes(10, [2, 1, 1])
    [5, 3, 2]
    """
    if total < 0 or not weights or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"cannot split {total} by weights {list(weights)}")
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    sizes = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def offsets(sizes: Sequence[int]) -> list[int]:
    """Start offset of each part: offsets([3, 2, 4]) == [0, 3, 5]."""
    starts, acc = [], 0
    for size in sizes:
        starts.append(acc)
        acc += size
    return starts


def query_rows(tables: Mapping[str, "torch.Tensor"], dims: Mapping[str, int], rows: slice) -> dict:
    """`tables` with the tables named in `dims` (masks and position tables, one row per query along
    the dim it gives: -2 for [..., queries, keys]) cut to `rows`; the others stay whole."""
    def cut(value: "torch.Tensor", dim: int) -> "torch.Tensor":
        return value[(slice(None),) * (dim % value.dim()) + (rows,)]
    return {name: cut(value, dims[name]) if name in dims else value for name, value in tables.items()}
