"""The readable printer (lower/emit.py, lower/torch_code.py) against its slow twin: the captured
graph itself. Code printed from a graph must compute what the graph computes."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from galaxy.compiler.lower.emit import emit


class Ops(torch.nn.Module):
    """Ops whose printed form needs care: precedence, slicing, indexing, casts, identities."""

    def forward(self, x, y, ids):
        a = -x[..., 4:] * 2.0 - y[:, :, :4] ** 2
        b = torch.where(a > 0, a, x[:, 1:2, :4].sum(-1, keepdim=True))
        c = torch.cat([b, -b], dim=-1).transpose(1, 2).reshape(2, -1)
        mask = (ids[:, None, :] == ids[:, :, None]) & (ids[:, None, :] >= 0)
        d = x.float().masked_fill(~mask[:, :, :1], float("-inf")).softmax(-1)
        e = (x * 1.0 + 0).to(torch.float32).expand(2, 3, 8)  # identities
        f = F.gelu(e, approximate="tanh") / (1 + x.pow(2).mean(-1, keepdim=True)).rsqrt()
        return c, d, f[:, 0], F.silu(f).unsqueeze(1)


def _printed_function(gm: torch.fx.GraphModule):
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    outputs = [a.name for a in gm.graph.output_node().args[0]]
    code = emit(nodes, {n: n for n in inputs}, outputs, {o: f"out_{i}" for i, o in enumerate(outputs)})
    body = "\n".join(f"    {line}" for line in code.lines)
    source = f"def printed({', '.join(inputs)}):\n{body}\n    return {', '.join(code.values[o] for o in outputs)}\n"
    namespace = {"torch": torch, "F": F, "aten": torch.ops.aten}
    exec(compile(source, "<printed>", "exec"), namespace)
    return namespace["printed"], source


def test_printed_code_computes_what_the_graph_computes():
    args = (torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.tensor([[0, 1, 1], [2, -1, 2]]))
    exported = torch.export.export(Ops(), args)
    printed, source = _printed_function(exported.graph_module)
    for got, expected in zip(printed(*args), exported.module()(*args)):
        torch.testing.assert_close(got, expected, equal_nan=True)  # a row masked whole is nan in both
    assert "aten." not in source  # every op here has a readable form
    assert "9223372036854775807" not in source and "[..., 4:]" in source
    assert not re.search(r"\b(?:mul|add|slice|unsqueeze|to)_\d+\b", source)  # no fx names
    assert ".to(torch.float32)" not in source and "* 1.0" not in source  # identities dropped
