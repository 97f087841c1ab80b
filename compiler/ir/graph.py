"""TransformerGraph: the captured graph cut into blocks. Plain data naming fx nodes.

The graph is the chain  prologue | (attention, connective, mlp, connective) x L | epilogue.
Blocks refer to nodes of the captured fx graph by name; no attribute is set on fx Nodes.

- A `Projection` is a linear-like op (aten.linear, or the Conv1D addmm pattern of GPT-2),
  possibly a column range of a fused weight (GPT-2's c_attn holds q, k and v).
- A `Region` is a list of fx nodes emitted verbatim: the connective blocks, the MLP
  activation, the per-head transforms of q and k (RoPE), the prologue and the epilogue.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Projection:
    output: str  # node holding the [batch, seq, out] result
    input: str  # node holding the [batch, seq, in] operand
    weight: str  # placeholder name of the weight
    bias: str | None
    weight_is_in_out: bool  # Conv1D stores [in, out]; aten.linear [out, in]
    in_features: int
    out_features: int  # of this projection (after the column range)
    column_offset: int = 0  # column range inside a fused weight
    nodes: tuple[str, ...] = ()  # every node the pattern covers
    # Heads interleaved in a fused weight (GPT-NeoX: q, k, v of head 0, then of head 1...): head h
    # of this projection is columns h * head_stride + column_offset + [0, head_width). 0: contiguous.
    head_stride: int = 0
    head_width: int = 0


@dataclass(frozen=True)
class Region:
    nodes: tuple[str, ...]  # in graph order
    inputs: tuple[str, ...]  # values defined outside the region, in first-use order
    outputs: tuple[str, ...]  # values used after the region


@dataclass(frozen=True)
class AttentionBlock:
    layer: int
    input: str  # the hidden states every projection reads (full sequence)
    q: Projection
    k: Projection
    v: Projection
    q_transform: Region  # e.g. RoPE; from the split-heads transpose to sdpa
    k_transform: Region
    v_transform: Region
    sdpa: str
    mask: str | None  # prologue value passed as attn_mask
    is_causal: bool
    scale: float | None
    heads: int
    kv_heads: int
    head_dim: int
    out: Projection  # output projection: row-split, summed by the reduce-scatter
    # Elementwise ops with scalars between a projection and its split-heads view (OPT scales q
    # there): [batch, seq, heads * head_dim] in and out, so they run on any subset of heads.
    q_prepare: Region = Region((), (), ())
    k_prepare: Region = Region((), (), ())
    v_prepare: Region = Region((), (), ())
    # Head kinds whose transform reads the [B, S, H, D] view and transposes it itself (GPT-J).
    seq_major: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return (*self.q.nodes, *self.k.nodes, *self.v.nodes, *self.q_prepare.nodes, *self.k_prepare.nodes,
                *self.v_prepare.nodes, *self.q_transform.nodes, *self.k_transform.nodes,
                *self.v_transform.nodes, self.sdpa, *self.out.nodes)


@dataclass(frozen=True)
class MLPBlock:
    layer: int
    input: str
    projections: tuple[Projection, ...]  # up (and gate): column-split
    activation: Region  # from the projections to the down projection's input
    down: Projection  # row-split, summed by the reduce-scatter

    @property
    def intermediate(self) -> int:
        return self.projections[0].out_features


@dataclass(frozen=True)
class Layer:
    index: int
    attention: AttentionBlock
    after_attention: Region  # connective: residual add, norm (token-local); empty in a parallel layer
    mlp: MLPBlock
    after_mlp: Region | None  # None for the last layer: its connective runs in the epilogue
    # A parallel layer (GPT-J, NeoX, Phi): the MLP does not read the attention's output; the region
    # after them reads `block_output`, the node adding the two outputs (passes/parallel.py).
    block_output: str | None = None

    @property
    def parallel(self) -> bool:
        return self.block_output is not None


@dataclass(frozen=True)
class TransformerGraph:
    name: str
    batch: int
    seq_len: int
    hidden: int
    prologue: Region  # replicated on every rank over the whole sequence
    layers: tuple[Layer, ...]
    epilogue: Region  # on rank 0 over the whole sequence
    input_names: tuple[str, ...]  # user input placeholders
    output_nodes: tuple[str, ...]  # values returned, aligned with output_names
    output_names: tuple[str, ...]
    token_sliced: frozenset[str] = field(default_factory=frozenset)  # prologue values cut by tokens
    warnings: tuple[str, ...] = ()
