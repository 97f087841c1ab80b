"""predict(plan, table): the latency model, one walk over each stage's schedule.

The walk follows what a rank runs (ir/schedule.py): the stage's enter action, each layer's blocks
with the actions at their borders, the stage's exit action; the head at the end. Every action is
charged by the one cost function of its kind (cost/actions.py), so the sequence of actions
charged is the sequence the generated modules call. The ILP (planner/ilp.py) and the pipeline
DP (planner/pipeline_dp.py) linearise this model and check their objective against it.

Legend (one stage, n ranks r in ring order; d(r) is the device of rank r):
    G[r], C[r], x[r]  KV groups, MLP columns, tokens rank r holds;  S tokens;  L layers of the stage
    a, c              attention seconds per KV group, MLP seconds per column (whole sequence)
    k_con             connective seconds per token;  P, E prologue, epilogue seconds

Compute of a block on rank r (a rank of a block with an all-gather, or a Megatron-style all-reduce,
works on every token of its heads or columns; otherwise on its own x[r] of the S tokens):

    attention = G[r] a[d] q[r]        q[r] = 1 if the block gathers tokens or holds them all, else x[r] / S
    mlp       = C[r] c[d] q[r]
    connective = x[r] k_con[d]        (both connective blocks of a layer)

A block's seconds are max over ranks (compute + the CPU its actions spend moving bytes) + link
time of its actions - the part hidden behind GEMMs. Per forward:

    prologue  = max over stage 0 of P[d] (+ its enter action: SCATTER or REP)
    transfer  = the RECV of each later stage
    layers    = L_s (attention + connective + mlp) per stage
    handoff   = the stage's exit action (GATHER to rank 0, or SEND to the next stage's leader)
    epilogue  = E[d(0)] (+ in a pipeline, receiving the head's inputs from the last stage's leader)
    latency   = sum of them (a request crosses the stages one after another)
"""
from __future__ import annotations

from typing import Sequence

from galaxy.compiler.cost.actions import Charge, Site, charge, total
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.plan import BlockTime, Plan, StageSplit
from galaxy.compiler.ir.schedule import Action, BlockSchedule


def predict(plan: Plan, table: CostTable) -> tuple[float, tuple[BlockTime, ...]]:
    """Predicted latency of one forward and its per-block times."""
    blocks: list[BlockTime] = []
    previous: tuple[int, ...] = ()
    for i, stage in enumerate(plan.stages):
        ring = tuple(table.index(plan.devices[r]) for r in stage.ranks)
        blocks.append(enter_block(table, i, stage, ring, previous))
        blocks.extend(layer_blocks(table, i, stage, ring))
        if stage.schedule.exit is not None:
            site = Site(table, ring, stage.tokens_per_rank)
            blocks.append(_block(i, "handoff", [0.0] * len(ring), [(stage.schedule.exit, site)], per_layer=False))
        previous = ring
    blocks.append(_epilogue(plan, table))
    return total_latency_s(plan, blocks), tuple(blocks)


def block_s(block: BlockTime) -> float:
    return max(block.compute_s_per_rank, default=0.0) + block.comm_s - block.hidden_s


def total_latency_s(plan: Plan, blocks: Sequence[BlockTime]) -> float:
    return sum(block_s(b) * (len(plan.stages[b.stage].layers) if b.per_layer else 1) for b in blocks)


def stage_layer_s(table: CostTable, stage: StageSplit, ring: Sequence[int]) -> float:
    """Seconds of one layer of `stage` over the devices `ring` (attention + connective + mlp)."""
    return sum(block_s(b) for b in layer_blocks(table, 0, stage, tuple(ring)))


def enter_block(table: CostTable, i: int, stage: StageSplit, ring: tuple[int, ...],
                previous: tuple[int, ...]) -> BlockTime:
    """The prologue and the stage's enter action (stage 0), or the RECV from the stage before."""
    action = stage.schedule.enter
    if i == 0:
        compute = [table.prologue_s[d] + table.overhead_s(d) for d in ring]
        return _block(0, "prologue", compute, [(action, Site(table, ring, stage.tokens_per_rank))], per_layer=False)
    site = Site(table, ring, stage.tokens_per_rank, sender=previous[0])
    return _block(i, "transfer", [0.0] * len(ring), [(action, site)], per_layer=False)


def layer_blocks(table: CostTable, i: int, stage: StageSplit, ring: tuple[int, ...]) -> list[BlockTime]:
    """Attention, connective, MLP of one layer of stage `i` (a parallel layer: its one block, connective)."""
    x = stage.tokens_per_rank
    if stage.schedule.parallel:
        return [_parallel_block(table, i, stage, ring), _connective_block(table, i, x, ring)]
    attention = stage.schedule.block("attn")
    mlp = stage.schedule.block("mlp")
    return [
        _tp_block(table, i, "attention", attention, ring, x, stage.kv_heads_per_rank,
                  table.attention_s_per_group, table.attention_in_s_per_group, table.attention_out_s_per_group),
        _connective_block(table, i, x, ring),
        _tp_block(table, i, "mlp", mlp, ring, x, stage.columns_per_rank,
                  table.mlp_s_per_column, table.mlp_in_s_per_column, table.mlp_out_s_per_column),
    ]


def _connective_block(table: CostTable, i: int, tokens: Sequence[int], ring: tuple[int, ...]) -> BlockTime:
    """Both connective blocks of a layer, on each rank's tokens."""
    compute = [x * table.connective_s_per_token[d] + table.overhead_s(d, x) for x, d in zip(tokens, ring)]
    return _block(i, "connective", compute, [])


def _tp_block(table: CostTable, i: int, name: str, block: BlockSchedule, ring: tuple[int, ...],
              tokens: Sequence[int], work: Sequence[int], per: Sequence[float], per_in: Sequence[float],
              per_out: Sequence[float]) -> BlockTime:
    """A tensor-parallel block: its compute on each rank and each of its actions, with the GEMM the
    action may hide behind (the input GEMM for a gather, the output GEMM for a reduction)."""
    queries = [1.0 if block.shape in ("hybrid", "tensor") else xj / table.tokens for xj in tokens]
    compute = [w * per[d] * q + table.overhead_s(d, w) for w, d, q in zip(work, ring, queries)]
    sites = []
    for action in block.actions:
        gemm = per_in if action.op in ("AG", "KVAG") else per_out
        # KVAG: the key/value part of the QKV projection, on this rank's tokens
        scale = queries if action.op == "KVAG" else [1.0] * len(ring)
        seconds = tuple(w * gemm[d] * q for w, d, q in zip(work, ring, scale))
        sites.append((action, _site(table, ring, tokens, seconds)))
    return _block(i, name, compute, sites)


def _site(table: CostTable, ring: tuple[int, ...], tokens: Sequence[int], gemm_s: Sequence[float],
          tensors: int | None = None) -> Site:
    """An action beside each rank's GEMM of `gemm_s` seconds; it hides behind the least of them."""
    hiding = min((table.hiding_s(d, g) for d, g in zip(ring, gemm_s)), default=0.0)
    return Site(table, ring, tuple(tokens), hiding, tuple(gemm_s), tensors=tensors)


def _parallel_block(table: CostTable, i: int, stage: StageSplit, ring: tuple[int, ...]) -> BlockTime:
    """Attention and MLP side by side: their compute adds up, the all-gather (of k tensors) hides
    behind both input GEMMs when one input feeds them (one fused GEMM; with two inputs it hides
    behind nothing), the reduce-scatter behind both output GEMMs; KVAG as in attention."""
    block = stage.schedule.block("par")
    tokens, groups, columns = stage.tokens_per_rank, stage.kv_heads_per_rank, stage.columns_per_rank
    queries = [1.0 if block.shape in ("hybrid", "tensor") else xj / table.tokens for xj in tokens]
    compute = [(g * table.attention_s_per_group[d] + c * table.mlp_s_per_column[d]) * q + table.overhead_s(d, g + c)
               for g, c, d, q in zip(groups, columns, ring, queries)]
    fused_in = table.parallel_block_inputs == 1
    per_rank = list(zip(groups, columns, ring, queries))
    gemms = {"AG": [(g * table.attention_in_s_per_group[d] + c * table.mlp_in_s_per_column[d]) * fused_in
                    for g, c, d, _ in per_rank],
             "RS": [g * table.attention_out_s_per_group[d] + c * table.mlp_out_s_per_column[d]
                    for g, c, d, _ in per_rank],
             "KVAG": [g * table.attention_in_s_per_group[d] * q for g, _, d, q in per_rank]}
    sites = [(action, _site(table, ring, tokens, gemms.get(action.op, [0.0] * len(ring)),
                            tensors=table.parallel_block_inputs if action.op == "AG" else None))
             for action in block.actions]
    return _block(i, "block", compute, sites)


def _block(i: int, name: str, compute: Sequence[float], sites: Sequence[tuple[Action, Site]],
           per_layer: bool = True) -> BlockTime:
    charges = [charge(action, site) for action, site in sites]
    summed = total(charges, len(compute)) if charges else Charge(cpu_s_per_rank=(0.0,) * len(compute))
    return BlockTime(i, name, tuple(c + cpu for c, cpu in zip(compute, summed.cpu_s_per_rank)),
                     comm_s=summed.link_s, hidden_s=summed.hidden_s, per_layer=per_layer,
                     comm_cpu_s_per_rank=summed.cpu_s_per_rank,
                     actions=tuple(str(action) for action, _ in sites if action.op != "REP"))


def _epilogue(plan: Plan, table: CostTable) -> BlockTime:
    """The head on rank 0; in a pipeline it first receives its inputs from the last stage's leader."""
    head = table.index(plan.devices[0])
    ranks = plan.stages[0].ranks
    if len(plan.stages) == 1:
        head_s = table.epilogue_s[head] + table.overhead_s(head)
        return _block(0, "epilogue", [head_s if r == 0 else 0.0 for r in ranks], [], per_layer=False)
    last = plan.stages[-1]
    site = Site(table, (head,), (table.tokens,), sender=table.index(plan.devices[last.ranks[0]]),
                tensors=table.head_tensors)
    received = _block(0, "epilogue", [table.epilogue_s[head] + table.overhead_s(head)], [(plan.head_receive, site)],
                      per_layer=False)
    on_head = {0: (received.compute_s_per_rank[0], received.comm_cpu_s_per_rank[0])}
    return BlockTime(0, "epilogue", tuple(on_head.get(r, (0.0, 0.0))[0] for r in ranks), comm_s=received.comm_s,
                     per_layer=False, comm_cpu_s_per_rank=tuple(on_head.get(r, (0.0, 0.0))[1] for r in ranks),
                     actions=received.actions)


def stage_enter_s(table: CostTable, stage: StageSplit, ring: Sequence[int], previous: Sequence[int] = ()) -> float:
    """Seconds of a stage's enter block over the devices `ring`: the prologue and its SCATTER or REP
    (the first stage), or the RECV from the stage on `previous`."""
    first = not previous
    return block_s(enter_block(table, 0 if first else 1, stage, tuple(ring), tuple(previous)))


def stage_exit_s(table: CostTable, stage: StageSplit, ring: Sequence[int]) -> float:
    """Seconds of a stage's exit action over the devices `ring` (0 without one)."""
    if stage.schedule.exit is None:
        return 0.0
    site = Site(table, tuple(ring), stage.tokens_per_rank)
    return block_s(_block(0, "handoff", [0.0] * len(ring), [(stage.schedule.exit, site)], per_layer=False))


def head_receive_s(table: CostTable, head: int, sender: int, wire: str = "float32") -> float:
    """Seconds rank 0 on `head` spends receiving the head's inputs whole from `sender` (a pipeline)."""
    site = Site(table, (head,), (table.tokens,), sender=sender, tensors=table.head_tensors)
    return block_s(_block(0, "epilogue", [0.0], [(Action("RECV", wire=wire), site)], per_layer=False))
