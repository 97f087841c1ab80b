"""online_attention (keys and values attended as they arrive, online softmax) on real gloo processes.

Compared with its slow twin, run in the same ranks: all-gather the keys and values with the naive
collective, then one SDPA over every key. Uneven splits with ranks holding 0 tokens, ring orders
other than rank order, GQA (2 query heads a KV head) and plain heads, no mask, a padding mask
(bool), a causal mask cut to each rank's query rows, an additive float mask; both exchanges
(direct, ring) and fp16 on the wire. One spawned world per world size runs every case.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from _gloo import assert_op_passed, check
from galaxy.runtime.collectives import all_gather_naive
from galaxy.runtime.online_attention import online_attention
from galaxy.runtime.ring import Ring
from galaxy.runtime.splits import offsets

pytestmark = pytest.mark.dist

# Blocks merged by the online softmax reorder the fp32 sums of one SDPA: a few ulps of the
# outputs (|out| <= max |v| ~ 4), so 1e-5 absolute and relative.
FP32 = dict(rtol=1e-5, atol=1e-5)
FP16_WIRE = dict(rtol=1e-5, atol=1e-5)  # both sides see the same fp16-rounded keys and values

SPLITS = {2: [[5, 3], [0, 7], [6, 1]], 3: [[4, 0, 3], [2, 5, 1], [0, 0, 6], [3, 3, 2]]}
RING_ORDERS = {2: [(0, 1), (1, 0)], 3: [(0, 1, 2), (2, 0, 1)]}
HEADS = [(4, 2), (3, 3)]  # (query heads, KV heads)
HEAD_DIM, BATCH, SCALE = 8, 2, 0.3
MASKS = ("none", "padding", "causal", "additive")
OPS = [f"{algorithm} {mask}" for algorithm in ("direct", "ring") for mask in MASKS] + ["wire_float16"]


def _mask(kind: str, tokens: int, gen: torch.Generator) -> torch.Tensor | None:
    """A whole-sequence mask [B or 1, 1, S, S] of `kind`; every query row sees one key or more."""
    if kind == "none":
        return None
    if kind == "causal":
        return torch.ones(tokens, tokens, dtype=torch.bool).tril()
    if kind == "padding":  # the last keys of the second sequence are padding
        keep = torch.ones(BATCH, 1, 1, tokens, dtype=torch.bool)
        keep[1, ..., tokens - 2:] = False
        return keep.expand(BATCH, 1, tokens, tokens)
    return torch.randn(1, 1, tokens, tokens, generator=gen)


def run_all_cases(rank: int, world: int) -> dict[str, list[str]]:
    failures = {op: [] for op in OPS}
    seed = 0
    for order in RING_ORDERS[world]:
        for split in SPLITS[world]:
            for heads, kv_heads in HEADS:
                for kind in MASKS:
                    seed += 1
                    ring = Ring(order, rank, timeout_s=10)
                    me, tokens = ring.index, sum(split)
                    rows = slice(offsets(split)[me], offsets(split)[me] + split[me])
                    gen = torch.Generator().manual_seed(seed)
                    q = torch.randn(BATCH, heads, tokens, HEAD_DIM, generator=gen)
                    kv = torch.randn(BATCH, tokens, 2 * kv_heads * HEAD_DIM, generator=gen)
                    mask = _mask(kind, tokens, gen)
                    my_mask = None if mask is None else mask[..., rows, :]
                    case = f"ring{order} split{split} heads {heads}/{kv_heads} {kind}"
                    expected = _twin(q[:, :, rows], kv[:, rows], my_mask, split, ring, kv_heads)
                    one_process = _sdpa(q[:, :, rows], kv, mask=my_mask, kv_heads=kv_heads)
                    for algorithm in ("direct", "ring"):
                        got = online_attention(q[:, :, rows], kv[:, rows], my_mask, split, ring,
                                               head_dim=HEAD_DIM, scale=SCALE, algorithm=algorithm)
                        op = f"{algorithm} {kind}"
                        check(failures, op, case, lambda: assert_close(got, expected, **FP32))
                        check(failures, op, case + " vs one process", lambda: assert_close(got, one_process, **FP32))
                    got = online_attention(q[:, :, rows], kv[:, rows], my_mask, split, ring, head_dim=HEAD_DIM,
                                           scale=SCALE, wire_dtype=torch.float16)
                    wired = _twin(q[:, :, rows], kv[:, rows], my_mask, split, ring, kv_heads, torch.float16)
                    check(failures, "wire_float16", case, lambda: assert_close(got, wired, **FP16_WIRE))
    return failures


def _twin(q, kv_local, mask, split, ring, kv_heads, wire=None):
    """The slow, obviously correct twin: gather every key and value, then one SDPA."""
    kv = all_gather_naive(kv_local, split, ring)
    if wire is not None:
        kv = kv.to(wire).to(kv_local.dtype)
    return _sdpa(q, kv, mask, kv_heads)


def _sdpa(q, kv, mask, kv_heads):
    k, v = (t.reshape(BATCH, kv.shape[1], kv_heads, HEAD_DIM).transpose(1, 2) for t in kv.chunk(2, dim=-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=SCALE, enable_gqa=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("world", [2, 3])
def test_online_attention_matches_gather_then_sdpa(world, op):
    assert_op_passed(world, run_all_cases, op)

