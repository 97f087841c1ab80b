"""The Plan: who runs what. Plain data, deterministic JSON with a format version.

A plan found by the ILP has the same type as one written by hand or made by a baseline
(even split, proportional split, pipeline DP): codegen cannot tell them apart.

Ranks are positions in `devices`. Rank 0 holds the input, runs the head (epilogue) and
returns the output. A plan has one or more pipeline stages; each stage runs a contiguous
range of layers over its own ranks, sharing each layer by its split (heads, columns, tokens
per rank) and communicating as its schedule says (ir/schedule.py). A single stage over all
ranks with the hybrid schedule is plain HMP.

Format 2 stores each stage's schedule as its string form. Format 1 files (a stage's `tiles`,
`sequence_parallel` and `tensor_parallel`, the plan's `wire_dtype`) are read and converted.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.schedule import WIRE_BYTES, Action, StageSchedule, stage_schedule

FORMAT_VERSION = 2


@dataclass(frozen=True)
class StageSplit:
    """One pipeline stage: its ranks, how each layer's work is shared among them, and its schedule.

    All per-rank lists are aligned with `ranks` (the ring order inside the stage). They count what
    each rank holds: a rank that holds every weight (sequence parallelism only) lists all the
    model's heads and columns; a rank that holds every token (Megatron-style) lists all tokens.
    """

    ranks: tuple[int, ...]
    first_layer: int
    end_layer: int  # exclusive
    heads_per_rank: tuple[int, ...]  # attention heads (query heads)
    kv_heads_per_rank: tuple[int, ...]  # key/value heads (== heads without GQA)
    columns_per_rank: tuple[int, ...]  # MLP intermediate columns
    tokens_per_rank: tuple[int, ...]  # sequence positions in connective blocks
    schedule: StageSchedule

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.end_layer)

    @property
    def parallelism(self) -> str:
        """How the stage shares a layer, in words."""
        return self.schedule.parallelism


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
    actions: tuple[str, ...] = ()  # the schedule actions charged in this block, in the order they run


@dataclass(frozen=True)
class Plan:
    model: str
    cluster: str
    devices: tuple[str, ...]  # device name of each rank
    stages: tuple[StageSplit, ...]
    solver: str  # ilp | even | proportional | pipeline-dp | brute-force | manual
    objective: str = "latency"
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

    @property
    def head_receive(self) -> Action | None:
        """In a pipeline rank 0 receives the head's inputs whole from the last stage's leader before it
        runs the head: the RECV matching that stage's SEND. None when the head's stage is the last."""
        if len(self.stages) == 1:
            return None
        return Action("RECV", wire=self.stages[-1].schedule.exit.wire)

    @property
    def wire_dtype(self) -> str:
        """The least precise dtype any action sends (what the outputs' tolerance depends on)."""
        wires = {a.wire for s in self.stages for a in s.schedule.actions} | {"float32"}
        return min(sorted(wires), key=lambda w: (WIRE_BYTES[w], w != "bfloat16"))

    def stage_of_rank(self, rank: int) -> int:
        for i, stage in enumerate(self.stages):
            if rank in stage.ranks:
                return i
        raise KeyError(rank)

    # --- serialisation -------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = asdict(self)
        for stage, original in zip(data["stages"], self.stages):
            stage["schedule"] = str(original.schedule)
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
        if version == 1:
            data = upgrade_v1(data)
        elif version != FORMAT_VERSION:
            raise PlanFileError(f"plan format_version {version!r} is not {FORMAT_VERSION} (or 1); "
                                "re-run galaxy-compile --plan-only to regenerate it")
        try:
            stages = tuple(StageSplit(**{k: _stage_field(k, v) for k, v in s.items()}) for s in data["stages"])
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
            rows.append(f"  stage {i}: layers {stage.first_layer}-{stage.end_layer - 1}, schedule {stage.schedule}")
            rows.append(f"    {'rank':<5}{'device':<14}{'heads':>6}{'kv':>4}{'columns':>9}{'tokens':>8}")
            for j, rank in enumerate(stage.ranks):
                rows.append(f"    {rank:<5}{self.devices[rank]:<14}{stage.heads_per_rank[j]:>6}"
                            f"{stage.kv_heads_per_rank[j]:>4}{stage.columns_per_rank[j]:>9}"
                            f"{stage.tokens_per_rank[j]:>8}")
        rows.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(rows)


def validate_plan(plan: Plan, heads: int, kv_heads: int, intermediate: int, seq_len: int,
                  n_layers: int, every_rank: bool = True) -> None:
    """Check a plan (hand-written or found) against the model; raise PlanFileError if wrong.
    `every_rank=False` lets ranks of `devices` sit out (a decode plan over some of the prefill's
    devices: ir/generation.py)."""
    covered = []
    for i, s in enumerate(plan.stages):
        n, schedule = len(s.ranks), s.schedule
        for name in ("heads_per_rank", "kv_heads_per_rank", "columns_per_rank", "tokens_per_rank"):
            if len(getattr(s, name)) != n:
                raise PlanFileError(f"stage {i}: {name} has {len(getattr(s, name))} entries, "
                                    f"stage has {n} ranks")
        for name, total in (("heads_per_rank", heads), ("kv_heads_per_rank", kv_heads),
                            ("columns_per_rank", intermediate), ("tokens_per_rank", seq_len)):
            values = getattr(s, name)
            whole = schedule.layout == "whole" if name == "tokens_per_rank" else not schedule.shards_weights
            what = name.removesuffix("_per_rank").replace("_", " ")
            if whole and n > 1:
                if set(values) != {total}:
                    raise PlanFileError(f"stage {i} ({schedule}): every rank holds all {total} {what}, "
                                        f"not {list(values)}")
            elif sum(values) != total or min(values) < 0:
                raise PlanFileError(f"stage {i}: {name} {list(values)} must be >= 0 and sum to {total}")
        group = heads // kv_heads
        for h, kv in zip(s.heads_per_rank, s.kv_heads_per_rank):
            if h != kv * group:
                raise PlanFileError(f"stage {i}: a rank with {kv} KV heads must have {kv * group} "
                                    f"query heads (GQA groups of {group}), not {h}")
        _check_schedule(i, s, first=i == 0, last=i == len(plan.stages) - 1, single=len(plan.stages) == 1)
        covered.extend(s.layers)
    if covered != list(range(n_layers)):
        raise PlanFileError(f"stages cover layers {covered[:3]}..., expected 0..{n_layers - 1} in order")
    ranks = sorted(r for s in plan.stages for r in s.ranks)
    if every_rank and ranks != list(range(plan.world_size)):
        raise PlanFileError(f"every rank 0..{plan.world_size - 1} must be in exactly one stage; got {ranks}")
    if len(set(ranks)) != len(ranks) or not set(ranks) <= set(range(plan.world_size)):
        raise PlanFileError(f"ranks must be in at most one stage and in 0..{plan.world_size - 1}; got {ranks}")
    if 0 not in plan.stages[0].ranks:
        raise PlanFileError("rank 0 holds the input, so it must be in the first stage")


def _check_schedule(i: int, stage: StageSplit, first: bool, last: bool, single: bool) -> None:
    """The schedule must be one the runtime and codegen run: entered and left as the stage's place
    in the pipeline requires, with a layout its enter and exit actions deliver."""
    schedule, n = stage.schedule, len(stage.ranks)
    enter, exit_ = schedule.enter.op, schedule.exit.op if schedule.exit else None
    where = f"stage {i} ({schedule})"
    if not first and enter != "RECV":
        raise PlanFileError(f"{where}: a later pipeline stage enters with RECV (the hidden states of the stage before)")
    if first and enter == "RECV":
        raise PlanFileError(f"{where}: the first stage computes its inputs (SCATTER or REP), it has no stage before it")
    if not single and exit_ != "SEND":
        raise PlanFileError(f"{where}: every stage of a pipeline exits with SEND (to the next stage, or the "
                            "head's inputs to rank 0)")
    if single and exit_ == "SEND":
        raise PlanFileError(f"{where}: a one-stage plan has no next stage to SEND to; exit with GATHER or -")
    if enter == "BCAST" and (schedule.layout != "whole" or n < 2):
        raise PlanFileError(f"{where}: BCAST sends rank 0's layer inputs whole to the other ranks of a stage that "
                            "all-reduces (every token on every rank)")
    if schedule.layout == "whole" and n > 1:
        if first and enter not in ("REP", "BCAST"):
            raise PlanFileError(f"{where}: with every token on every rank the first stage enters with REP or BCAST")
        if single and exit_ is not None:
            raise PlanFileError(f"{where}: with every token on every rank a one-stage plan exits with -")
    elif n > 1 and (enter == "REP" or (single and exit_ is None)):
        raise PlanFileError(f"{where}: ranks that hold their own tokens enter with SCATTER (or RECV) and "
                            "exit with GATHER (or SEND)")
    if any(a.op == "AR" and a.tiles > 1 for a in schedule.actions):
        raise PlanFileError(f"{where}: an all-reduce has no tiles (nothing overlaps it)")
    if any(b.shape == "sequence" for b in schedule.layer) and min(stage.tokens_per_rank) < 1:
        raise PlanFileError(f"{where}: sequence parallelism only needs at least one token per rank")


def _stage_field(key: str, value):
    if key == "schedule":
        return StageSchedule.parse(value) if isinstance(value, str) else value
    return tuple(value) if isinstance(value, list) else value


def upgrade_v1(data: dict) -> dict:
    """A format 1 plan as format 2: each stage's tiles and parallel mode, and the plan's wire dtype,
    become the stage's schedule (ir/schedule.stage_schedule); a Megatron-style stage lists every
    token on every rank."""
    data = dict(data)
    wire = data.pop("wire_dtype", "float32")
    stages = []
    count = len(data.get("stages", ()))
    for i, stage in enumerate(data.get("stages", ())):
        stage = dict(stage)
        tiles = stage.pop("tiles", 1)
        sequence_parallel = stage.pop("sequence_parallel", True)
        tensor_parallel = stage.pop("tensor_parallel", True)
        shape = "sequence" if not tensor_parallel else "hybrid" if sequence_parallel else "tensor"
        if shape == "tensor":
            stage["tokens_per_rank"] = [sum(stage["tokens_per_rank"])] * len(stage["ranks"])
        stage["schedule"] = stage_schedule(len(stage["ranks"]), shape=shape, tiles=tiles, wire=wire,
                                           first=i == 0, last=i == count - 1)
        stages.append(stage)
    data["stages"] = stages
    data["format_version"] = FORMAT_VERSION
    return data
