"""What `forward` knows about the world besides its inputs and weights: the RankContext."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .ring import Ring
from .stages import Handoff


@dataclass(frozen=True)
class RankContext:
    """What `forward` knows about the world besides its inputs and weights."""

    rank: int
    world_size: int
    device_names: tuple[str, ...]  # device name of each rank
    timeout_s: float  # every wait on a peer gives up after this long
    stage_ranks: tuple[tuple[int, ...], ...]  # plan["plan"]["stages"][i]["ranks"]
    plan: dict  # the whole plan.json
    bundle_dir: Path
    handoff: Handoff  # this rank's sends and receives between pipeline stages

    def ring(self, stage_index: int = 0) -> Ring:
        """The ranks of pipeline stage `stage_index`, in ring order, seen from this rank."""
        return Ring(self.stage_ranks[stage_index], self.rank, self.timeout_s, self.device_names)

    @property
    def stage_index(self) -> int:
        """The pipeline stage this rank belongs to."""
        return next(i for i, ranks in enumerate(self.stage_ranks) if self.rank in ranks)

    def world(self) -> Ring:
        """All ranks, in rank order (for barriers and broadcasts)."""
        return Ring(tuple(range(self.world_size)), self.rank, self.timeout_s, self.device_names)


def make_context(rank: int, plan: dict, bundle_dir: Path, timeout_s: float) -> RankContext:
    """The RankContext of `rank` in `plan` (plan.json as a dict)."""
    devices = tuple(plan["plan"]["devices"])
    world = Ring(tuple(range(len(devices))), rank, timeout_s, devices)
    return RankContext(rank, len(devices), devices, timeout_s,
                       tuple(tuple(s["ranks"]) for s in plan["plan"]["stages"]), plan, bundle_dir, Handoff(world))
