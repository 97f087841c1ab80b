"""Parallel attention/MLP blocks (GPT-J, GPT-NeoX, Falcon, Phi), recognised from the graph.

A layer is parallel when its MLP reads no value computed from its attention: both read the
layer's (normalised) input, and the connective block after them starts by adding the two
outputs, `attn_out + mlp_out (+ residual)`. Reduce-scatter and all-reduce are linear, so the two
partial sums can be added on each rank and reduced once: recognition takes that add out of the
connective block, which then reads the block's one output (`Layer.block_output`, the add node)
instead of the two.

    find_sum        the add of the two outputs (through eval-mode dropout and aliases)
    rewrite         drop it and the identities feeding it from the region after the block
"""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import AttentionBlock, MLPBlock
from galaxy.compiler.passes.patterns import aten

_ADDS = {aten.add.Tensor, aten.add_.Tensor}
_PASS_THROUGH = {aten.alias.default, aten.clone.default, aten.contiguous.default, aten.detach.default}


def depends_on(node: fx.Node, name: str, dynamic: set[str]) -> bool:
    """True when `node` is computed from the node called `name` (through dynamic nodes)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current.name == name:
            return True
        if current.name in seen:
            continue
        seen.add(current.name)
        stack.extend(a for a in current.all_input_nodes if a.name in dynamic)
    return False


def is_parallel(attention: AttentionBlock, mlp: MLPBlock, nodes: dict[str, fx.Node], dynamic: set[str]) -> bool:
    return not depends_on(nodes[mlp.input], attention.out.output, dynamic)


def _passes_through(node: fx.Node) -> bool:
    if node.target in _PASS_THROUGH:
        return True
    if node.target == aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        return train is False
    return False


def _identity_chain(start: fx.Node) -> list[fx.Node]:
    """`start` followed by its single-user pass-through nodes (eval dropout, alias...)."""
    chain = [start]
    while len(chain[-1].users) == 1 and _passes_through(next(iter(chain[-1].users))):
        chain.append(next(iter(chain[-1].users)))
    return chain


def find_sum(attention: AttentionBlock, mlp: MLPBlock, nodes: dict[str, fx.Node]) -> tuple[fx.Node, set[str]]:
    """The add of the attention's and the MLP's outputs, and the pass-through nodes between them and it."""
    chains = [_identity_chain(nodes[attention.out.output]), _identity_chain(nodes[mlp.down.output])]
    ends = [chain[-1] for chain in chains]
    users = [list(end.users) for end in ends]
    if len(users[0]) == 1 and users[0] == users[1] and users[0][0].target in _ADDS:
        total = users[0][0]
        if {a.name for a in total.args if isinstance(a, fx.Node)} == {e.name for e in ends}:
            return total, {n.name for chain in chains for n in chain[1:]}
    raise UntraceableModelError(f"layer {attention.layer}: attention and MLP run side by side (parallel "
                                "blocks), but their outputs are not added together first "
                                "(attn_out + mlp_out + residual); Galaxy sums them before one reduction",
                                "add", attention.out.output)
