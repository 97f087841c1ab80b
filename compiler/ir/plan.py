"""The Plan: who runs what. Plain data, deterministic JSON with a format version.

A plan found by the ILP has the same type as one written by hand or made by a baseline
(even split, proportional split, pipeline DP): codegen cannot tell them apart.

Ranks are positions in `devices`. Rank 0 holds the input, runs the head (epilogue) and
returns the output. A plan has one or more pipeline stages; each stage runs a contiguous
range of layers with hybrid parallelism over its own ranks. A single stage over all ranks
is plain HMP.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from galaxy.compiler.errors import PlanFileError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StageSplit:
    """One pipeline stage: its ranks and how each layer's work is shared among them.

    All per-rank lists are aligned with `ranks` (the ring order inside the stage).
    """

    ranks: tuple[int, ...]
    first_layer: int
    end_layer: int  # exclusive
    heads_per_rank: tuple[int, ...]  # attention heads (query heads)
    kv_heads_per_rank: tuple[int, ...]  # key/value heads (== heads without GQA)
    columns_per_rank: tuple[int, ...]  # MLP intermediate columns
    tokens_per_rank: tuple[int, ...]  # sequence positions in connective blocks
    tiles: int = 1  # sequence tiles per AllGather/ReduceScatter for overlap; 1 = none
    # False: Megatron-style tensor parallelism, the baseline Galaxy improves on: every rank
    # holds every token, connective blocks run replicated, tensor-parallel blocks end in an
    # all-reduce (tokens_per_rank is then unused).
    sequence_parallel: bool = True
    # False: sequence parallelism only, the other baseline: every rank holds every weight
    # (heads/columns_per_rank are then all the model's) and runs whole layers on its own
    # tokens; attention all-gathers keys and values, the layer's only collective.
    tensor_parallel: bool = True

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.end_layer)

    @property
    def parallelism(self) -> str:
        """How the stage shares a layer, in words."""
        if not self.tensor_parallel:
            return "sequence parallelism only (every weight on every rank)"
        if not self.sequence_parallel:
            return "tensor parallelism, replicated connective blocks (Megatron-style)"
        return "hybrid: tensor-parallel attention and MLP, sequence-parallel connective blocks"


@dataclass(frozen=True)
class BlockTime:
    """Predicted time of one block kind in one layer of a stage."""

    stage: int
    block: str  # attention | mlp | connective | all_gather | reduce_scatter | prologue | epilogue | ...
    compute_s_per_rank: tuple[float, ...]
    comm_s: float = 0.0  # link time of the block's collective
    hidden_s: float = 0.0  # part of comm_s hidden behind compute by tiling
    per_layer: bool = True  # counted once per layer of the stage, else once per forward
    comm_cpu_s_per_rank: tuple[float, ...] = ()  # part of compute_s_per_rank spent moving bytes


@dataclass(frozen=True)
class Plan:
    model: str
    cluster: str
    devices: tuple[str, ...]  # device name of each rank
    stages: tuple[StageSplit, ...]
    solver: str  # ilp | even | proportional | pipeline-dp | brute-force | manual
    objective: str = "latency"
    wire_dtype: str = "float32"  # dtype of activations on the wire
    microbatches: int = 1
    predicted_latency_s: float = 0.0
    # Throughput plans: steady-state seconds per request with requests streaming through the
    # stages (cost/throughput.py). None (and absent from the JSON) for latency plans.
    predicted_s_per_request: float | None = None
    predicted_blocks: tuple[BlockTime, ...] = ()
    notes: tuple[str, ...] = ()  # why devices are in or out, solver status
    format_version: int = FORMAT_VERSION

    @property
    def world_size(self) -> int:
        return len(self.devices)

    def stage_of_rank(self, rank: int) -> int:
        for i, stage in enumerate(self.stages):
            if rank in stage.ranks:
                return i
        raise KeyError(rank)

    # --- serialisation -------------------------------------------------------------------
    def to_json(self) -> dict:
        data = asdict(self)
        if data["predicted_s_per_request"] is None:  # latency plans keep their JSON unchanged
            del data["predicted_s_per_request"]
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    @staticmethod
    def from_json(data: dict) -> "Plan":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise PlanFileError(f"plan format_version {version!r} is not {FORMAT_VERSION}; "
                                "re-run galaxy-compile --plan-only to regenerate it")
        try:
            stages = tuple(StageSplit(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in s.items()}) for s in data["stages"])
            blocks = tuple(BlockTime(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in b.items()})
                           for b in data.get("predicted_blocks", ()))
            fields = {k: v for k, v in data.items() if k not in ("stages", "predicted_blocks")}
            fields["devices"] = tuple(fields["devices"])
            fields["notes"] = tuple(fields.get("notes", ()))
            return Plan(stages=stages, predicted_blocks=blocks, **fields)
        except (KeyError, TypeError) as exc:
            raise PlanFileError(f"malformed plan: {exc}") from exc

    @staticmethod
    def load(path: str | Path) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlanFileError(f"cannot read plan {path}: {exc}") from exc
        return Plan.from_json(data)

    def __str__(self) -> str:
        rows = [f"plan for {self.model} on {self.cluster} ({self.solver}, {self.objective}): "
                f"predicted {self.predicted_latency_s * 1e3:.1f} ms"
                + (f", {self.predicted_s_per_request * 1e3:.1f} ms per request streaming"
                   if self.predicted_s_per_request is not None else "")]
        for i, stage in enumerate(self.stages):
            rows.append(f"  stage {i}: layers {stage.first_layer}-{stage.end_layer - 1}, tiles {stage.tiles}")
            rows.append(f"    {'rank':<5}{'device':<14}{'heads':>6}{'kv':>4}{'columns':>9}{'tokens':>8}")
            for j, rank in enumerate(stage.ranks):
                rows.append(f"    {rank:<5}{self.devices[rank]:<14}{stage.heads_per_rank[j]:>6}"
                            f"{stage.kv_heads_per_rank[j]:>4}{stage.columns_per_rank[j]:>9}"
                            f"{stage.tokens_per_rank[j]:>8}")
        rows.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(rows)


def validate_plan(plan: Plan, heads: int, kv_heads: int, intermediate: int, seq_len: int,
                  n_layers: int) -> None:
    """Check a plan (hand-written or found) against the model; raise PlanFileError if wrong."""
    covered = []
    for i, s in enumerate(plan.stages):
        n = len(s.ranks)
        for name in ("heads_per_rank", "kv_heads_per_rank", "columns_per_rank", "tokens_per_rank"):
            if len(getattr(s, name)) != n:
                raise PlanFileError(f"stage {i}: {name} has {len(getattr(s, name))} entries, "
                                    f"stage has {n} ranks")
        for name, total in (("heads_per_rank", heads), ("kv_heads_per_rank", kv_heads),
                            ("columns_per_rank", intermediate), ("tokens_per_rank", seq_len)):
            values = getattr(s, name)
            if not s.tensor_parallel and name != "tokens_per_rank":
                if set(values) != {total}:
                    raise PlanFileError(f"stage {i}: without tensor parallelism every rank holds all "
                                        f"{total} {name.removesuffix('_per_rank')}, not {list(values)}")
            elif sum(values) != total or min(values) < 0:
                raise PlanFileError(f"stage {i}: {name} {list(values)} must be >= 0 and sum to {total}")
        group = heads // kv_heads
        for h, kv in zip(s.heads_per_rank, s.kv_heads_per_rank):
            if h != kv * group:
                raise PlanFileError(f"stage {i}: a rank with {kv} KV heads must have {kv * group} "
                                    f"query heads (GQA groups of {group}), not {h}")
        if s.tiles < 1:
            raise PlanFileError(f"stage {i}: tiles must be >= 1")
        if not s.sequence_parallel and (len(plan.stages) > 1 or s.tiles > 1):
            raise PlanFileError(f"stage {i}: replicated connective blocks (sequence_parallel false) "
                                "need a one-stage plan without tiles")
        if not s.tensor_parallel and (not s.sequence_parallel or min(s.tokens_per_rank) < 1):
            raise PlanFileError(f"stage {i}: sequence parallelism only (tensor_parallel false) needs "
                                "sequence_parallel true and at least one token per rank")
        covered.extend(s.layers)
    if covered != list(range(n_layers)):
        raise PlanFileError(f"stages cover layers {covered[:3]}..., expected 0..{n_layers - 1} in order")
    ranks = sorted(r for s in plan.stages for r in s.ranks)
    if ranks != list(range(plan.world_size)):
        raise PlanFileError(f"every rank 0..{plan.world_size - 1} must be in exactly one stage; got {ranks}")
    if 0 not in plan.stages[0].ranks:
        raise PlanFileError("rank 0 holds the input, so it must be in the first stage")
