"""RankProgram: everything the rank-module template prints for one device. Plain data.

Lowering precomputes it (which heads, columns and tokens this rank owns, the verbatim code
of every region, the weight names); the template only lays it out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from galaxy.compiler.ir.schedule import Action, StageSchedule


@dataclass(frozen=True)
class FunctionCode:
    """A generated function: its signature pieces and body lines (already indented 0)."""

    name: str
    params: tuple[str, ...]
    body: tuple[str, ...]
    returns: tuple[str, ...]
    doc: str
    sources: tuple[str, ...] = ()  # fx nodes it came from


@dataclass(frozen=True)
class AttentionCode:
    heads: int  # this rank's query heads
    kv_heads: int
    head_dim: int
    first_head: int
    total_heads: int
    split_sizes: tuple[int, int, int]  # columns of q, k, v in the fused local weight
    has_bias: bool
    q_transform: str | None  # name of a FunctionCode, or None
    k_transform: str | None
    v_transform: str | None
    mask: str | None  # static value name
    is_causal: bool
    scale: float | None
    sources: tuple[str, ...]
    prepares: tuple[FunctionCode, ...] = ()  # `<kind>_prepare`: rewrites q, k or v before the heads split
    seq_major: tuple[str, ...] = ()  # kinds whose transform reads [B, S, H, D] and transposes itself
    # The key/value cache: None (no generation), "prompt" (keep the prompt's keys and values for
    # the decode steps) or "step" (one new token: append its key and value, attend to the cache).
    cache: str | None = None


@dataclass(frozen=True)
class MLPCode:
    columns: int
    first_column: int
    total_columns: int
    projection_names: tuple[str, ...]  # names bound to each projection's output
    has_bias: bool
    activation: tuple[str, ...]  # body lines
    activation_output: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class StagePosition:
    """Where this rank sits in a (possibly one-stage) pipeline."""

    index: int
    count: int
    ring_index: int  # position in its stage's ring
    first_layer: int
    end_layer: int  # exclusive
    previous_leader: int | None  # rank that sends this stage its hidden states
    next_ranks: tuple[int, ...]  # ranks of the next stage (empty for the last stage)
    last_leader: int  # leader of the last stage: it sends the head's inputs to rank 0
    input_source: int  # ring position of rank 0 in the first stage: it scatters the embeddings

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


@dataclass(frozen=True)
class RankProgram:
    rank: int
    world_size: int
    stage: StagePosition
    device: str
    source: str  # the model file
    cluster: str
    plan_id: str
    predicted_latency_s: float
    batch: int
    seq_len: int
    hidden: int
    n_layers: int
    tokens_per_rank: tuple[int, ...]
    schedule: StageSchedule  # the stage's actions: codegen emits one template macro per action
    head_receive: Action | None  # rank 0 of a pipeline: how the head's inputs come back
    query_row_statics: dict[str, int]  # prologue values sliced to this rank's query rows (no TP): their dim
    attention: AttentionCode
    mlp: MLPCode
    transforms: tuple[FunctionCode, ...]  # per-head transforms (q, k, v)
    prologue: FunctionCode
    after_attention: FunctionCode | None  # None in a parallel layer
    after_mlp: FunctionCode | None  # None for a one-layer model; after_block in a parallel layer
    epilogue: FunctionCode | None  # rank 0 only
    layer_entries: tuple[str, ...]  # prologue values that enter layer 0, in layer-parameter order
    layer_entry_roles: tuple[str, ...]  # their names inside the layer loop (x, residual, ...)
    entry_shapes: tuple[tuple[int, ...], ...]  # whole-sequence shapes of the layer entries
    after_attention_outputs: tuple[str, ...]  # names the layer loop binds to its results
    mlp_input: str  # the name among them that the MLP reads
    epilogue_entries: tuple[str, ...]  # names gathered to rank 0 for the epilogue
    epilogue_entry_shapes: tuple[tuple[int, ...], ...]
    output_names: tuple[str, ...]
    weight_file: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    # A parallel layer (attention and MLP side by side): what its block reads (x, or x and x_mlp).
    block_inputs: tuple[str, ...] = ()
    # forward (one pass), prefill (one pass that fills the key/value cache) or decode (one token);
    # max_len: the tokens the cache holds (generation bundles).
    phase: str = "forward"
    max_len: int = 0

    @property
    def parallel(self) -> bool:
        return bool(self.block_inputs)
