"""Ring: the ranks of one pipeline stage, in ring order, as seen from this process.

Collectives address peers by global rank (the default process group), so a ring needs no
sub-group of its own. A ring of size 1 makes every collective an identity.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ring:
    ranks: tuple[int, ...]  # global ranks in ring order; per-rank lists align with this
    rank: int  # this process's global rank
    timeout_s: float = 120.0  # every wait on a peer gives up after this long
    device_names: tuple[str, ...] = ()  # device name of each global rank, if known

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        object.__setattr__(self, "device_names", tuple(self.device_names))
        if not self.ranks or len(set(self.ranks)) != len(self.ranks):
            raise ValueError(f"ring ranks must be distinct and non-empty, got {list(self.ranks)}")
        if self.rank not in self.ranks:
            raise ValueError(f"rank {self.rank} is not in ring {list(self.ranks)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def index(self) -> int:
        """Position of this process in the ring."""
        return self.ranks.index(self.rank)

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def next_rank(self) -> int:
        """Global rank this process sends to in a ring step."""
        return self.ranks[(self.index + 1) % self.size]

    @property
    def prev_rank(self) -> int:
        """Global rank this process receives from in a ring step."""
        return self.ranks[(self.index - 1) % self.size]

    def rank_at(self, index: int) -> int:
        """Global rank at ring position `index` (taken modulo the ring size)."""
        return self.ranks[index % self.size]

    def describe(self, rank: int) -> str:
        """'rank 2 (phone)' when the device name is known, else 'rank 2'."""
        if 0 <= rank < len(self.device_names) and self.device_names[rank]:
            return f"rank {rank} ({self.device_names[rank]})"
        return f"rank {rank}"
