"""Blockwise attention merged by the online softmax equals one SDPA (runtime/online_attention.py),
with the fused CPU kernel and with the plain-torch path a torch without it takes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from galaxy.runtime import online_attention as oa

FP32 = dict(rtol=1e-5, atol=1e-5)  # blocks reorder the fp32 sums of one softmax
SHAPES = [(1, 4, 2, 5, 9, 8), (2, 6, 6, 7, 7, 4), (1, 4, 1, 3, 10, 8)]  # B, H, H_kv, queries, keys, D
BLOCKS = [[1.0], [0.3, 0.7], [0.0, 0.2, 0.5, 0.3], [0.9, 0.0, 0.1]]  # fractions of the keys


def _masks(batch: int, heads: int, queries: int, keys: int, gen: torch.Generator) -> dict:
    padding = torch.rand(batch, 1, queries, keys, generator=gen) > 0.3
    padding[..., 0, :] = True
    padding[..., 0, :3] = False  # row 0 sees no key of the first block
    return {"none": None, "padding": padding, "causal": torch.ones(keys, keys, dtype=torch.bool).tril()[keys - queries:],
            "additive": torch.randn(1, heads, queries, keys, generator=gen)}


@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "plain torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_blockwise_attention_equals_sdpa(monkeypatch, fused, shape):
    if fused and oa._fused_kernel() is None:
        pytest.skip("this torch has no fused CPU kernel with log-sum-exp")
    monkeypatch.setattr(oa, "_FUSED", oa._fused_kernel() if fused else None)
    batch, heads, kv_heads, queries, keys, dim = shape
    gen = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(batch, heads, queries, dim, generator=gen)
    k, v = (torch.randn(batch, kv_heads, keys, dim, generator=gen) for _ in range(2))
    for name, mask in _masks(batch, heads, queries, keys, gen).items():
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
        for fractions in BLOCKS:
            sizes = [int(f * keys) for f in fractions]
            sizes[-1] += keys - sum(sizes)
            assert_close(oa.blockwise_attention(q, k, v, mask, 0.3, sizes), expected, **FP32, msg=f"{name} {sizes}")


def test_a_row_that_sees_no_key_in_a_block_takes_nothing_from_it():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    mask = torch.tensor([[False, False, False, True, True, True], [True] * 6])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(oa.blockwise_attention(q, k, v, mask, 0.5, [3, 3]), expected, **FP32)
