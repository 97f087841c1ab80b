"""Slice weights for one rank: its heads, its MLP columns, and the replicated rest.

Every projection is normalised to aten.linear's [out, in] layout (GPT-2's Conv1D stores
[in, out]); q, k and v of the rank's heads are fused into one weight so the rank runs one
GEMM (heads interleaved in a fused weight, as in GPT-NeoX, are regrouped: all q, then k, then v),
and so are the MLP's up and gate projections.
"""
from __future__ import annotations

import torch

from galaxy.compiler.ir.graph import AttentionBlock, MLPBlock, Projection


def _rows(proj: Projection, tensors: dict[str, torch.Tensor], start: int, stop: int):
    """Output rows [start, stop) of a projection as ([rows, in] weight, bias or None)."""
    weight = tensors[proj.weight]
    weight = weight.t() if proj.weight_is_in_out else weight
    bias = tensors[proj.bias] if proj.bias else None
    if proj.head_stride:  # interleaved heads: pick this projection's columns of each head
        width = proj.head_width
        index = torch.cat([torch.arange(h * proj.head_stride + proj.column_offset,
                                        h * proj.head_stride + proj.column_offset + width)
                           for h in range(start // width, stop // width)] or [torch.zeros(0, dtype=torch.long)])
        return weight[index], None if bias is None else bias[index]
    lo, hi = proj.column_offset + start, proj.column_offset + stop
    return weight[lo:hi], None if bias is None else bias[lo:hi]


def _input_columns(proj: Projection, tensors: dict[str, torch.Tensor], start: int, stop: int):
    weight = tensors[proj.weight]
    weight = weight.t() if proj.weight_is_in_out else weight
    return weight[:, start:stop]


def _fuse(parts) -> tuple[torch.Tensor, torch.Tensor | None]:
    weights = torch.cat([w for w, _ in parts])
    biases = [b for _, b in parts]
    if all(b is None for b in biases):
        return weights, None
    filled = [b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype) for (w, _), b in zip(parts, biases)]
    return weights, torch.cat(filled)


def attention_weights(att: AttentionBlock, tensors, heads: range, kv_heads: range) -> dict[str, torch.Tensor]:
    d = att.head_dim
    parts = [_rows(att.q, tensors, heads.start * d, heads.stop * d),
             _rows(att.k, tensors, kv_heads.start * d, kv_heads.stop * d),
             _rows(att.v, tensors, kv_heads.start * d, kv_heads.stop * d)]
    qkv_weight, qkv_bias = _fuse(parts)
    out = {"attention.qkv.weight": qkv_weight,
           "attention.out.weight": _input_columns(att.out, tensors, heads.start * d, heads.stop * d)}
    if qkv_bias is not None:
        out["attention.qkv.bias"] = qkv_bias
    if att.out.bias:
        out["attention.out.bias"] = tensors[att.out.bias]
    return out


def mlp_weights(mlp: MLPBlock, tensors, columns: range) -> dict[str, torch.Tensor]:
    in_weight, in_bias = _fuse([_rows(p, tensors, columns.start, columns.stop) for p in mlp.projections])
    out = {"mlp.in.weight": in_weight,
           "mlp.down.weight": _input_columns(mlp.down, tensors, columns.start, columns.stop)}
    if in_bias is not None:
        out["mlp.in.bias"] = in_bias
    if mlp.down.bias:
        out["mlp.down.bias"] = tensors[mlp.down.bias]
    return out


def fuse_parallel(shard: dict[str, torch.Tensor], fuse_inputs: bool) -> dict[str, torch.Tensor]:
    """A parallel layer's slices as one block: `block.out.weight` takes the attention's and the MLP's
    output columns side by side (one GEMM sums both partial outputs), and with `fuse_inputs` (both
    read the same input) `block.in.weight` stacks their input rows (one GEMM, behind one gather)."""
    out = dict(shard)
    out["block.out.weight"] = torch.cat([out.pop("attention.out.weight"), out.pop("mlp.down.weight")], dim=1)
    if fuse_inputs:
        parts = [(out.pop("attention.qkv.weight"), out.pop("attention.qkv.bias", None)),
                 (out.pop("mlp.in.weight"), out.pop("mlp.in.bias", None))]
        out["block.in.weight"], bias = _fuse(parts)
        if bias is not None:
            out["block.in.bias"] = bias
    return out


DECODE_PREFIX = "decode."  # a generation bundle's decode weights that differ from the prefill's


def with_decode_weights(prefill: dict[str, torch.Tensor], decode: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One rank's weight file of a generation bundle: its prefill weights, and the decode step's
    where they differ (a layout that splits layers another way), under DECODE_PREFIX. A decode
    weight equal to the prefill's is stored once (runtime.generate reads both back)."""
    merged = dict(prefill)
    for name, tensor in decode.items():
        same = name in prefill and prefill[name].shape == tensor.shape and torch.equal(prefill[name], tensor)
        if not same:
            merged[DECODE_PREFIX + name] = tensor
    return merged
