"""ModelSummary: the numbers about a recognised Transformer that cost and planning need.

It is what the planner side sees of the model (no torch, no fx): shapes, counts and byte
sizes. `passes/recognise.py` derives it from the captured graph.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSummary:
    name: str
    batch: int
    seq_len: int
    hidden: int
    n_layers: int
    heads: int
    kv_heads: int  # == heads without GQA
    head_dim: int
    intermediate: int  # MLP columns
    gated_mlp: bool  # gate and up projections (Llama) or one up projection (BERT, GPT-2)
    attention_bias: bool
    mlp_bias: bool
    dtype_bytes: int  # bytes per weight/activation element (4 for fp32)
    prologue_param_bytes: int  # what masks and rotary tables take: on every rank
    prologue_flops: float  # run on every rank over the whole sequence
    epilogue_param_bytes: int  # rank 0 only: the embeddings it scatters, final norm, head
    epilogue_flops: float
    connective_param_bytes_per_layer: int  # norms and output biases: replicated
    # Hidden-stream tensors ([batch, seq, hidden]) that enter a layer (handed between pipeline
    # stages) and that the head reads from the last layer (gathered to rank 0): GPT-2 and Llama
    # carry the residual beside the normed stream.
    layer_entry_tensors: int = 1
    head_input_tensors: int = 1
    # Parallel attention/MLP blocks (GPT-J, NeoX, Phi): 0 when the MLP follows the attention; else
    # the hidden-stream tensors the block's one all-gather carries: 1 when both read the same
    # input, 2 when each reads its own (NeoX normalises twice).
    parallel_block_inputs: int = 0

    @property
    def heads_per_kv_group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def parallel_blocks(self) -> bool:
        return self.parallel_block_inputs > 0

    def to_json(self) -> dict:
        data = asdict(self)
        if not self.parallel_block_inputs:  # models without parallel blocks keep their old files
            del data["parallel_block_inputs"]
        return data

    @staticmethod
    def from_json(data: dict) -> "ModelSummary":
        return ModelSummary(**data)
