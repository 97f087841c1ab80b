"""Ring bookkeeping, tiling, and size-1 rings (every collective an identity, no process group)."""
import pytest
import torch
import torch.nn.functional as F

from galaxy.runtime.collectives import all_gather, check_split, gather_hidden, reduce_scatter
from galaxy.runtime.overlap import all_gather_linear, linear_reduce_scatter, token_tiles
from galaxy.runtime.ring import Ring


def test_ring_neighbours_follow_ring_order_not_rank_order():
    ring = Ring((2, 0, 3), rank=0, timeout_s=5, device_names=("a", "b", "c", "d"))
    assert (ring.index, ring.size, ring.next_rank, ring.prev_rank) == (1, 3, 3, 2)
    assert ring.rank_at(3) == 2
    assert ring.describe(3) == "rank 3 (d)"
    assert Ring((0, 1), 1).describe(0) == "rank 0"


@pytest.mark.parametrize("ranks, rank, timeout", [((), 0, 1), ((0, 0), 0, 1), ((0, 1), 2, 1),
                                                  ((0,), 0, 0)])
def test_ring_rejects_bad_definitions(ranks, rank, timeout):
    with pytest.raises(ValueError):
        Ring(ranks, rank, timeout)


def test_split_must_match_the_ring():
    ring = Ring((0, 1), 0)
    with pytest.raises(ValueError, match="2 entries"):
        check_split([1, 2, 3], ring)
    with pytest.raises(ValueError):
        check_split([3, -1], ring)


def test_token_tiles_are_uneven_and_may_be_empty():
    assert token_tiles([5, 0, 2], 3) == [[(0, 2), (2, 2), (4, 1)], [(5, 0)] * 3,
                                         [(5, 1), (6, 1), (7, 0)]]
    with pytest.raises(ValueError):
        token_tiles([1], 0)


def test_size_one_ring_is_identity_without_communication():
    ring = Ring((0,), 0)  # no process group exists in this process
    x = torch.randn(2, 5, 4)
    w, b = torch.randn(3, 4), torch.randn(3)
    for result in (all_gather(x, [5], ring, wire_dtype=torch.float16), reduce_scatter(x, [5], ring),
                   gather_hidden([x], [5], ring)[0]):
        torch.testing.assert_close(result, x, rtol=0, atol=0)
        assert result.data_ptr() != x.data_ptr()  # never aliases: callers may modify in place
    torch.testing.assert_close(all_gather_linear(x, w, b, [5], ring, tiles=3), F.linear(x, w, b))
    torch.testing.assert_close(linear_reduce_scatter(x, w, [5], ring, tiles=2), F.linear(x, w))


def test_token_count_mismatch_is_reported():
    with pytest.raises(ValueError, match="expected 4 tokens"):
        all_gather(torch.randn(1, 5, 2), [4], Ring((0,), 0))
    with pytest.raises(ValueError, match="last dim"):
        all_gather_linear(torch.randn(5, 2), torch.randn(3, 2), None, [2], Ring((0,), 0), dim=-1)
