"""linear_into: the fused ops' GEMM written into its rows of the output, equal to F.linear."""
import pytest
import torch
import torch.nn.functional as F

from galaxy.runtime.overlap import linear_into


@pytest.mark.parametrize("batch, bias", [(1, True), (1, False), (2, True)])  # batch 2: rows not contiguous
def test_rows_get_exactly_what_f_linear_gives(batch, bias):
    x, weight = torch.randn(batch, 7, 5), torch.randn(3, 5)
    b = torch.randn(3) if bias else None
    out = torch.full((batch, 10, 3), float("nan"))
    linear_into(out.narrow(1, 2, 7), x, weight, b)
    torch.testing.assert_close(out[:, 2:9], F.linear(x, weight, b), rtol=0, atol=0)
    assert out[:, :2].isnan().all() and out[:, 9:].isnan().all()  # other rows untouched
