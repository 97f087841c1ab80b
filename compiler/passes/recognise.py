"""Recognise the Transformer in a captured aten graph: GraphModule -> TransformerGraph.

    find projections   linear / Conv1D ops on weights (passes/projections.py)
    mark dynamic       nodes that depend on a projection; the rest is static (prologue)
    merge statics      CSE, so every layer reads the same mask / rotary values
    attention blocks   one per scaled_dot_product_attention (passes/attention.py)
    MLP blocks         the projections between two attentions: up (+gate) -> activation -> down
    parallel layers    an MLP that does not read its attention's output runs beside it; the add
                       of their outputs becomes the layer's block output (passes/parallel.py)
    regions            what is left: connective blocks between tensor-parallel blocks,
                       the prologue before the first layer and the epilogue after the last

Only graph patterns are used, never module names. Ops that mix tokens inside a connective
block cannot be sequence-split and are reported by name.
"""
from __future__ import annotations

import logging

import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import AttentionBlock, Layer, MLPBlock, Projection, Region, TransformerGraph
from galaxy.compiler.passes.attention import recognise_attention
from galaxy.compiler.passes.cse import cse_static
from galaxy.compiler.passes.parallel import find_sum, is_parallel
from galaxy.compiler.passes.patterns import IGNORED, SDPA, is_column_local, is_token_local, shape
from galaxy.compiler.passes.projections import find_projections

log = logging.getLogger(__name__)


def recognise(captured: CapturedModel) -> TransformerGraph:
    gm = captured.graph_module
    projections = find_projections(gm, set(captured.tensors))
    cse_static(gm, _dynamic_nodes(gm, projections))
    projections = find_projections(gm, set(captured.tensors))
    dynamic = _dynamic_nodes(gm, projections)
    nodes = {n.name: n for n in gm.graph.nodes}

    sdpas = [n for n in gm.graph.nodes if n.target == SDPA]
    if not sdpas:
        raise UntraceableModelError("no scaled_dot_product_attention in the graph: Galaxy shards "
                                    "Transformers; build HF models with attn_implementation='sdpa'")
    attentions = [recognise_attention(n, i, projections, dynamic) for i, n in enumerate(sdpas)]
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    mlps = [_recognise_mlp(i, attentions, projections, dynamic, nodes, order) for i in range(len(sdpas))]
    parallel = {is_parallel(a, m, nodes, dynamic) for a, m in zip(attentions, mlps)}
    if len(parallel) > 1:
        raise UntraceableModelError("some layers run attention and MLP side by side and others one after the "
                                    "other; Galaxy generates one layer function for all layers")

    blocks = [b for pair in zip(attentions, mlps) for b in pair]
    interiors = [_interior(b, nodes, dynamic) for b in blocks]
    region_nodes = _assign_regions(gm, dynamic, interiors, blocks)
    sums = _take_out_block_sums(attentions, mlps, nodes, region_nodes) if parallel == {True} else {}
    for index, members in region_nodes.items():
        if index < len(blocks) - 1:
            _check_token_local(members, nodes, blocks[index])

    claimed = set().union(*interiors)
    epilogue_names = region_nodes.get(len(blocks) - 1, [])
    output_nodes = tuple(a.name for a in gm.graph.output_node().args[0])
    prologue = _prologue(gm, dynamic, claimed)
    later_users = _users_after(gm)
    regions = {i: _region(members, nodes, later_users) for i, members in region_nodes.items()}
    layers = tuple(
        Layer(i, attentions[i], regions.get(2 * i, Region((), (), ())), mlps[i],
              regions.get(2 * i + 1, Region((), (), ())) if i < len(sdpas) - 1 else None, sums.get(i))
        for i in range(len(sdpas)))
    epilogue = _region(epilogue_names, nodes, later_users, extra_outputs=output_nodes)

    token_sliced = _token_sliced(prologue, layers, dynamic, nodes)
    batch, seq, hidden = shape(nodes[attentions[0].input])
    graph = TransformerGraph(
        name=captured.name, batch=batch, seq_len=seq, hidden=hidden,
        prologue=prologue, layers=layers, epilogue=epilogue,
        input_names=captured.user_inputs, output_nodes=output_nodes,
        output_names=captured.output_names, token_sliced=frozenset(token_sliced),
    )
    log.info("recognised %d layers (%d heads, %d KV heads, %d MLP columns), hidden %d, seq %d",
             len(layers), attentions[0].heads, attentions[0].kv_heads, mlps[0].intermediate, hidden, seq)
    return graph


def _take_out_block_sums(attentions: list[AttentionBlock], mlps: list[MLPBlock], nodes: dict[str, fx.Node],
                         region_nodes: dict[int, list[str]]) -> dict[int, str]:
    """Parallel layers: the add of each layer's two block outputs leaves the region after them,
    which reads it as an input (passes/parallel.py). Returns layer -> the add node."""
    sums = {}
    for i, (attention, mlp) in enumerate(zip(attentions, mlps)):
        total, between = find_sum(attention, mlp, nodes)
        removed = between | {total.name}
        leftover = [n for n in region_nodes.get(2 * i, []) if n not in removed]
        if leftover:
            raise UntraceableModelError(f"layer {i}: the attention output of a parallel block is used before it "
                                        "is added to the MLP's", str(nodes[leftover[0]].target), leftover[0])
        region_nodes[2 * i] = []
        region_nodes[2 * i + 1] = [n for n in region_nodes.get(2 * i + 1, []) if n not in removed]
        sums[i] = total.name
    return sums


def _dynamic_nodes(gm: fx.GraphModule, projections: dict[str, Projection]) -> set[str]:
    """Nodes that depend on a projection: the activations of the layers."""
    starts = {p.nodes[1] if p.weight_is_in_out else p.nodes[0] for p in projections.values()}
    dynamic: set[str] = set()
    for node in gm.graph.nodes:
        if node.name in starts or any(a.name in dynamic for a in node.all_input_nodes):
            if node.op != "output":
                dynamic.add(node.name)
    return dynamic


def _recognise_mlp(layer: int, attentions: list[AttentionBlock], projections: dict[str, Projection],
                   dynamic: set[str], nodes: dict[str, fx.Node], order: dict[str, int]) -> MLPBlock:
    """The projections of layer `layer` that no attention owns (from its attention's first
    projection to the next one's): the ones reading one input, then the down one. In a parallel
    layer they may come before the attention's output projection."""
    def first_node(a: AttentionBlock) -> int:
        return min(order[p.nodes[0]] for p in (a.q, a.k, a.v))

    start = first_node(attentions[layer])
    stop = first_node(attentions[layer + 1]) if layer + 1 < len(attentions) else len(order)
    attention_outputs = {p.output for a in attentions for p in (a.q, a.k, a.v, a.out)}
    candidates = sorted((p for p in projections.values()
                         if start < order[p.output] < stop and p.output not in attention_outputs),
                        key=lambda p: order[p.output])
    if len(candidates) < 2:
        raise UntraceableModelError(f"layer {layer}: expected an MLP (two or more projections) after "
                                    "the attention", "linear", attentions[layer].out.output)
    first_input = candidates[0].input
    ups = tuple(p for p in candidates if p.input == first_input)
    rest = [p for p in candidates if p.input != first_input]
    if not rest:
        raise UntraceableModelError(f"layer {layer}: MLP has no down projection", "linear", first_input)
    down = rest[0]
    activation = _between_many([nodes[p.output] for p in ups], nodes[down.input], dynamic)
    for node in activation:
        if not is_column_local(node):
            raise UntraceableModelError(f"layer {layer}: the MLP activation uses {node.target}, which is "
                                        "not elementwise, so MLP columns cannot be split", str(node.target),
                                        node.name)
    widths = {p.out_features for p in ups}
    if len(widths) != 1:
        raise UntraceableModelError(f"layer {layer}: MLP projections have different widths {widths}")
    inputs = []
    for node in activation:
        for arg in node.all_input_nodes:
            if arg.name not in {n.name for n in activation} and arg.name not in inputs:
                inputs.append(arg.name)
    region = Region(tuple(n.name for n in activation), tuple(inputs), (down.input,))
    return MLPBlock(layer, first_input, ups, region, down)


def _between_many(starts: list[fx.Node], end: fx.Node, dynamic: set[str]) -> list[fx.Node]:
    """Dynamic nodes on paths from any of `starts` (exclusive) to `end` (inclusive)."""
    start_names = {s.name for s in starts}
    if end.name in start_names:
        return []
    found, stack = set(), [end]
    while stack:
        node = stack.pop()
        if node.name in found or node.name in start_names:
            continue
        found.add(node.name)
        stack.extend(a for a in node.all_input_nodes if a.name in dynamic)
    return [n for n in end.graph.nodes if n.name in found]


def _interior(block, nodes: dict[str, fx.Node], dynamic: set[str]) -> set[str]:
    """Every node a tensor-parallel block re-emits itself (its output node included)."""
    if isinstance(block, AttentionBlock):
        projs = [block.q, block.k, block.v]
        last = block.out
    else:
        projs = list(block.projections)
        last = block.down
    names = {n for p in (*projs, last) for n in p.nodes}
    starts = [nodes[p.output] for p in projs]
    names |= {n.name for n in _between_many(starts, nodes[last.input], dynamic)}
    return names


def _assign_regions(gm: fx.GraphModule, dynamic: set[str], interiors: list[set[str]],
                    blocks: list) -> dict[int, list[str]]:
    """Put each unclaimed dynamic node after the latest tensor-parallel block it depends on."""
    owner: dict[str, int] = {}
    outputs = {}
    for i, block in enumerate(blocks):
        out = block.out.output if isinstance(block, AttentionBlock) else block.down.output
        outputs[out] = i
        for name in interiors[i]:
            owner[name] = i
    region_of: dict[str, int] = {}
    regions: dict[int, list[str]] = {}
    for node in gm.graph.nodes:
        if node.name not in dynamic or node.name in owner:
            continue
        index = -1
        for arg in node.all_input_nodes:
            if arg.name in outputs:
                index = max(index, outputs[arg.name])
            elif arg.name in owner:
                raise UntraceableModelError("a value inside a tensor-parallel block is used outside it",
                                            str(node.target), node.name)
            elif arg.name in region_of:
                index = max(index, region_of[arg.name])
        region_of[node.name] = index
        regions.setdefault(index, []).append(node.name)
    return regions


def _check_token_local(members: list[str], nodes: dict[str, fx.Node], block) -> None:
    bad = [nodes[n] for n in members if not is_token_local(nodes[n])]
    if bad:
        ops = ", ".join(sorted({f"{n.target} ({n.name})" for n in bad}))
        raise UntraceableModelError(
            f"layer {block.layer}: the connective block after the {type(block).__name__} mixes tokens "
            f"({ops}); only elementwise ops and norms over the hidden dim can be sequence-split")


def _users_after(gm: fx.GraphModule) -> dict[str, list[str]]:
    return {n.name: [u.name for u in n.users] for n in gm.graph.nodes}


def _region(members: list[str], nodes: dict[str, fx.Node], users: dict[str, list[str]],
            extra_outputs: tuple[str, ...] = ()) -> Region:
    inside = set(members)
    inputs: list[str] = []
    for name in members:
        for arg in nodes[name].all_input_nodes:
            if arg.name not in inside and arg.name not in inputs:
                inputs.append(arg.name)
    outputs = [n for n in members if any(u not in inside for u in users[n]) or n in extra_outputs]
    outputs += [n for n in extra_outputs if n not in outputs]
    return Region(tuple(members), tuple(inputs), tuple(outputs))


def _prologue(gm: fx.GraphModule, dynamic: set[str], claimed: set[str]) -> Region:
    """Static call_function nodes that something needs: run on every rank, whole sequence."""
    members = [n for n in gm.graph.nodes if n.op == "call_function" and n.name not in dynamic
               and n.name not in claimed and n.target not in IGNORED]
    needed = _needed(gm, members, dynamic | claimed)
    members = [n for n in members if n.name in needed]
    inside = {n.name for n in members}
    inputs: list[str] = []
    for node in members:
        for arg in node.all_input_nodes:
            if arg.name not in inside and arg.name not in inputs:
                inputs.append(arg.name)
    outputs = [n.name for n in members if any(u.name not in inside and u.target not in IGNORED
                                              for u in n.users)]
    return Region(tuple(n.name for n in members), tuple(inputs), tuple(outputs))


def _needed(gm: fx.GraphModule, members: list[fx.Node], consumers: set[str]) -> set[str]:
    """Members that are (transitively) used by a consumer node or by the graph output."""
    member_names = {n.name for n in members}
    needed: set[str] = set()
    for node in reversed(list(gm.graph.nodes)):
        if node.name in member_names:
            if any(u.name in needed or u.name in consumers or u.op == "output" for u in node.users):
                needed.add(node.name)
    return needed


def _token_sliced(prologue: Region, layers: tuple[Layer, ...], dynamic: set[str],
                  nodes: dict[str, fx.Node]) -> set[str]:
    """Prologue values the connective blocks read: each rank keeps only its tokens of them."""
    sliced = set()
    for layer in layers:
        regions = [layer.after_attention] + ([layer.after_mlp] if layer.after_mlp else [])
        for region in regions:
            sliced |= {n for n in region.inputs if n in prologue.outputs}
        sliced |= {layer.attention.input, layer.mlp.input} & set(prologue.outputs)
    for name in sliced:
        s = shape(nodes[name])
        if s is None or len(s) < 2 or s[1] != shape(nodes[layers[0].attention.input])[1]:
            raise UntraceableModelError("a connective block reads a static value without a sequence "
                                        "dimension at dim 1", str(nodes[name].target), name)
    return sliced
