"""The one chunking helper: split a total into integer parts by weight. Used everywhere."""
from __future__ import annotations

from typing import Sequence


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
