"""Names by role for the values generated code passes around, read from graph patterns.

    the SDPA mask input                       mask
    a table a per-head transform reads        cos / sin (traced back to the op, or by how RoPE uses
                                              it: sin multiplies the rotated heads), else table
    an embedding lookup                       its weight's module (embed_tokens, wpe)
    an arange over the sequence               positions
    the hidden-stream values entering layer 0 their names inside the layer loop (x, residual)

Prologue values are keys of the `static` dict under these names, and the tensors folded at
compile time are stored with a rank's weights as `static.<name>`.
"""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.ir.graph import TransformerGraph
from galaxy.compiler.lower.emit import identity_of, value_name
from galaxy.compiler.passes.patterns import aten, shape
from galaxy.compiler.passes.prologue import epilogue_statics, layer_statics

_TABLE_OPS = {aten.cos.default: "cos", aten.sin.default: "sin"}
# Ops a position table passes through between its cos/sin and a transform: broadcasting, casts, scaling.
_TABLE_STEPS = {aten.unsqueeze.default, aten.expand.default, aten.view.default, aten.reshape.default,
                aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.mul.Tensor, aten.mul.Scalar,
                aten.transpose.int, aten.slice.Tensor}
STATIC_PREFIX = "static."  # weight-file key of a value folded at compile time


def stream_shape(graph: TransformerGraph) -> tuple[int, int, int]:
    """[batch, seq, hidden]: the shape of the hidden stream between blocks."""
    return graph.batch, graph.seq_len, graph.hidden


def graph_roles(nodes: list[fx.Node], fqns: dict[str, str], stream: tuple[int, ...]) -> dict[str, str]:
    """Names for values inside printed code: embedding lookups, aranges over the sequence, and sums
    shaped like the hidden stream `stream` ([batch, seq, hidden]: residual adds)."""
    seq_len = stream[1]
    roles = {}
    for node in nodes:
        if node.target == aten.add.Tensor and shape(node) == stream:
            roles[node.name] = "hidden"
        elif node.target == aten.embedding.default and node.args[0].name in fqns:
            parts = fqns[node.args[0].name].split(".")
            roles[node.name] = parts[-2] if len(parts) > 1 else parts[0]
        elif node.target in (aten.arange.default, aten.arange.start) and shape(node) == (seq_len,):
            roles[node.name] = "positions"
    return roles


def _table_role(node: fx.Node) -> str:
    """cos or sin when the table comes from one through broadcasting, casts and scaling."""
    start = node
    for _ in range(16):
        if node.target in _TABLE_OPS:
            return _TABLE_OPS[node.target]
        if node.op != "call_function" or (node.target not in _TABLE_STEPS and identity_of(node) is None):
            break
        node = node.args[0]
    return value_name(start) if start.op == "call_function" else "table"


def _rotary_role(name: str, graph: TransformerGraph, nodes: dict[str, fx.Node]) -> str | None:
    """cos or sin by how a transform uses the table: RoPE multiplies cos by the heads as they are and
    sin by the heads rotated (a neg on the way), whatever computed the table (GPT-J reads a buffer)."""
    att = graph.layers[0].attention
    members = {n for kind in "qkv" for n in getattr(att, f"{kind}_transform").nodes}
    for user in nodes[name].users:
        if user.name in members and user.target == aten.mul.Tensor:
            other = next((a for a in user.args if isinstance(a, fx.Node) and a.name != name), None)
            stack, seen, rotated = [other] if other is not None else [], set(), False
            while stack:
                node = stack.pop()
                if node.name in seen or node.name not in members:
                    continue
                seen.add(node.name)
                rotated |= node.target == aten.neg.default
                stack.extend(node.all_input_nodes)
            return "sin" if rotated else "cos"
    return None


def static_roles(graph: TransformerGraph, nodes: dict[str, fx.Node],
                 entry_roles: dict[str, str]) -> dict[str, str]:
    """Prologue value -> its key in `static` (unique): mask, cos, sin, the layer entries' roles."""
    att = graph.layers[0].attention
    wanted: dict[str, str] = dict(entry_roles)
    for name in layer_statics(graph) + epilogue_statics(graph):
        if name in wanted:
            continue
        wanted[name] = "mask" if name == att.mask else _table_role(nodes[name])
        if wanted[name] not in ("mask", "cos", "sin"):
            wanted[name] = _rotary_role(name, graph, nodes) or wanted[name]
    roles: dict[str, str] = {}
    for name, role in wanted.items():
        unique, k = role, 2
        while unique in roles.values():
            unique, k = f"{role}_{k}", k + 1
        roles[name] = unique
    return roles
