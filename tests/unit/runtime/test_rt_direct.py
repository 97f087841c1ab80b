"""Direct collectives: the order receives are waited for, and size-1 rings (no process group)."""
import torch
import torch.nn.functional as F

from galaxy.runtime.direct import (all_gather_direct, all_gather_linear_direct, arrival_order,
                                   linear_reduce_scatter_direct, reduce_scatter_direct)
from galaxy.runtime.ring import Ring


def test_receives_are_waited_for_smallest_chunk_first_then_round_the_ring():
    assert arrival_order([5, 3, 3, 1], me=1) == [3, 2, 0]
    assert arrival_order([4, 0, 2, 2], me=0) == [2, 3]  # 0 tokens: nothing to receive
    assert arrival_order([7], me=0) == []


def test_size_one_ring_needs_no_process_group_and_never_aliases_its_input():
    ring = Ring((0,), 0)
    x = torch.randn(2, 5, 4)
    w, b = torch.randn(3, 4), torch.randn(3)
    for result in (all_gather_direct(x, [5], ring, wire_dtype=torch.float16), reduce_scatter_direct(x, [5], ring)):
        torch.testing.assert_close(result, x, rtol=0, atol=0)
        assert result.data_ptr() != x.data_ptr()
    torch.testing.assert_close(all_gather_linear_direct(x, w, b, [5], ring), F.linear(x, w, b))
    torch.testing.assert_close(linear_reduce_scatter_direct(x, w, [5], ring), F.linear(x, w))
