"""predict(plan, table): the latency model, the one definition the ILP linearises.

Legend (one stage, ring of n ranks r in ring order; d(r) is the device of rank r):
    G[r], C[r], x[r]  KV groups, MLP columns, tokens of rank r;  m = max_r x[r];  t tiles
    a, a_in, a_out    attention seconds per group (all, QKV projections, output projection)
    c, c_in, c_out    MLP seconds per column (all, up/gate, down)
    k_con             connective seconds per token;  P, E prologue, epilogue seconds
    kappa             comm CPU seconds per byte;  b token wire bytes;  S tokens;  L layers
    ring(t)           link time of one AllGather or ReduceScatter in t tiles (cost/collectives.py)
    exposed(t, G)     its link time not hidden behind G seconds of GEMM (cost/overlap.py):
                      ring(1) for t = 1; max(0, ring(t) + G/(n t) - G, ring(t)/((n-1) t) - G/n) else

Per layer of a stage (each block waits for its slowest rank; a rank's CPU also does its
communication work, so that CPU time adds to its compute):

    cpu[r]   = 2 collectives x kappa[d] 2 (n - 1)/n S b                   (0 when n = 1)
    att      = max_r (G[r] a[d] + cpu[r]) + exposed(t, min_r G[r] a_in[d]) + exposed(t, min_r G[r] a_out[d])
    con      = max_r  x[r] k_con[d]
    mlp      = max_r (C[r] c[d] + cpu[r]) + exposed(t, min_r C[r] c_in[d]) + exposed(t, min_r C[r] c_out[d])
    layer    = att + con + mlp

Sequence parallelism only (tensor_parallel false: every rank holds every weight and runs whole
layers on its x[r] tokens; attention all-gathers keys and values, 2 / g hidden-stream bytes a token):

    att      = max_r (x[r] / S Gtot a[d] + kappa[d] 2 (n - 1)/n S b 2/g) + ring(1) at 2 b / g a token
    mlp      = max_r  x[r] / S Ctot c[d]

Once per forward:

    prologue = max over ranks of stage 0 of P[d]                           (replicated, whole sequence)
    transfer = h_in (max over links (i in stage s-1, j in stage s) alpha + beta S b,  plus max_j kappa[j] S b)
               before each later stage s (pipelines: stages run one after another for one request)
    epilogue = E[d(0)] + h_out (kappa[d(0)] (S - x[0]) b + sum_{r != 0 in last stage} alpha[r][0] + beta[r][0] x[r] b)
    h_in, h_out  hidden-stream tensors a hand-off moves and the head reads (ModelSummary; 2 for GPT-2
                 and Llama: the residual travels beside the normed stream). Not charged: the gather
                 to a stage's leader before a hand-off, and rank 0's scatter of the embeddings.
    latency  = prologue + sum_s (transfer_s + L_s layer_s) + epilogue

Each term is one `BlockTime`; a block's seconds are max(compute_s_per_rank) + comm_s - hidden_s
(comm_s = link time of all its collectives, hidden_s = the part overlap hides), and
latency = sum of block seconds, times the stage's layer count for per-layer blocks.
"""
from __future__ import annotations

from typing import Sequence

from galaxy.compiler.cost.collectives import collective_cpu_s, gather_link_s, ring_collective_s
from galaxy.compiler.cost.overlap import exposed_s, projection_exposed_s
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.plan import BlockTime, Plan, StageSplit


def predict(plan: Plan, table: CostTable) -> tuple[float, tuple[BlockTime, ...]]:
    """Predicted latency of one forward and its per-block times."""
    blocks: list[BlockTime] = []
    prev_ring: list[int] = []
    for i, stage in enumerate(plan.stages):
        ring = [table.index(plan.devices[r]) for r in stage.ranks]
        if i == 0:
            blocks.append(BlockTime(0, "prologue", tuple(table.prologue_s[d] for d in ring), per_layer=False))
        else:
            blocks.append(_transfer(table, i, prev_ring, ring, stage.tokens_per_rank))
        blocks.extend(_layer_blocks(table, i, stage, ring))
        prev_ring = ring
    blocks.append(_epilogue(plan, table))
    return total_latency_s(plan, blocks), tuple(blocks)


def block_s(block: BlockTime) -> float:
    return max(block.compute_s_per_rank, default=0.0) + block.comm_s - block.hidden_s


def total_latency_s(plan: Plan, blocks: Sequence[BlockTime]) -> float:
    return sum(block_s(b) * (len(plan.stages[b.stage].layers) if b.per_layer else 1) for b in blocks)


def stage_layer_s(table: CostTable, stage: StageSplit, ring: Sequence[int]) -> float:
    """Seconds of one layer of `stage` over the devices `ring` (att + con + mlp above)."""
    return sum(block_s(b) for b in _layer_blocks(table, 0, stage, list(ring)))


def transfer_s(table: CostTable, src: Sequence[int], dst: Sequence[int], tokens: Sequence[int]) -> float:
    """Seconds of the hand-off from the stage on `src` to the stage on `dst` (its tokens per rank)."""
    return block_s(_transfer(table, 0, list(src), list(dst), tokens))


def epilogue_s(table: CostTable, head: int, senders: Sequence[tuple[int, int]], own_tokens: int) -> float:
    """Seconds of the head on device `head`: its inputs come from `senders` (device, tokens), `own_tokens`
    are already there."""
    cpu, link = _head_return(table, head, senders, own_tokens)
    return table.epilogue_s[head] + cpu + link


def _layer_blocks(table: CostTable, i: int, stage: StageSplit, ring: list[int]) -> list[BlockTime]:
    if not stage.tensor_parallel:
        return _sequence_parallel_blocks(table, i, stage, ring)
    n, x, t = len(ring), stage.tokens_per_rank, stage.tiles
    ring_s = ring_collective_s(table, ring, max(x), t)
    cpu = tuple(2 * collective_cpu_s(table, d, n) for d in ring)

    def tp_block(name: str, work: Sequence[int], per: tuple[float, ...], per_in: tuple[float, ...],
                 per_out: tuple[float, ...]) -> BlockTime:
        exposed = (exposed_s(ring_s, t, min(w * per_in[d] for w, d in zip(work, ring)), n)
                   + exposed_s(ring_s, t, min(w * per_out[d] for w, d in zip(work, ring)), n))
        compute = tuple(w * per[d] + c for w, d, c in zip(work, ring, cpu))
        return BlockTime(i, name, compute, comm_s=2 * ring_s, hidden_s=2 * ring_s - exposed,
                         comm_cpu_s_per_rank=cpu)

    return [
        tp_block("attention", stage.kv_heads_per_rank, table.attention_s_per_group,
                 table.attention_in_s_per_group, table.attention_out_s_per_group),
        BlockTime(i, "connective", tuple(xj * table.connective_s_per_token[d] for xj, d in zip(x, ring))),
        tp_block("mlp", stage.columns_per_rank, table.mlp_s_per_column,
                 table.mlp_in_s_per_column, table.mlp_out_s_per_column),
    ]


def _sequence_parallel_blocks(table: CostTable, i: int, stage: StageSplit, ring: list[int]) -> list[BlockTime]:
    x, share, t = stage.tokens_per_rank, [xj / table.tokens for xj in stage.tokens_per_rank], stage.tiles
    kv_bytes = 2 * table.token_wire_bytes / table.heads_per_group  # one token's keys and values
    gather_s = ring_collective_s(table, ring, max(x), t, token_bytes=kv_bytes)
    projection_s = min(f * table.kv_groups * table.attention_in_s_per_group[d] for f, d in zip(share, ring))
    exposed = projection_exposed_s(gather_s, t, projection_s, len(ring))
    cpu = tuple(collective_cpu_s(table, d, len(ring), token_bytes=kv_bytes) for d in ring)
    attention = tuple(f * table.kv_groups * table.attention_s_per_group[d] + c for f, d, c in zip(share, ring, cpu))
    return [
        BlockTime(i, "attention", attention, comm_s=gather_s, hidden_s=gather_s - exposed, comm_cpu_s_per_rank=cpu),
        BlockTime(i, "connective", tuple(xj * table.connective_s_per_token[d] for xj, d in zip(x, ring))),
        BlockTime(i, "mlp", tuple(f * table.columns * table.mlp_s_per_column[d] for f, d in zip(share, ring))),
    ]


def _transfer(table: CostTable, i: int, src: list[int], dst: list[int], tokens: Sequence[int]) -> BlockTime:
    # every layer-entry tensor travels whole, one message each, and every receiver takes it whole
    k, full = table.entry_tensors, table.tokens * table.token_wire_bytes
    link = max(k * (table.alpha_s[a][b] + table.beta_s_per_byte[a][b] * full) for a in src for b in dst)
    cpu = tuple(k * table.comm_cpu_s_per_byte[d] * full for d in dst)
    return BlockTime(i, "transfer", cpu, comm_s=link, per_layer=False, comm_cpu_s_per_rank=cpu)


def _epilogue(plan: Plan, table: CostTable) -> BlockTime:
    head = table.index(plan.devices[0])
    last = plan.stages[-1]
    senders = [(table.index(plan.devices[r]), x) for r, x in zip(last.ranks, last.tokens_per_rank) if r != 0]
    own = dict(zip(last.ranks, last.tokens_per_rank)).get(0, 0)
    cpu, link = _head_return(table, head, senders, own)
    first = plan.stages[0].ranks
    return BlockTime(0, "epilogue", tuple(table.epilogue_s[head] + cpu if r == 0 else 0.0 for r in first),
                     comm_s=link, per_layer=False,
                     comm_cpu_s_per_rank=tuple(cpu if r == 0 else 0.0 for r in first))


def _head_return(table: CostTable, head: int, senders: Sequence[tuple[int, int]], own: int) -> tuple[float, float]:
    """(CPU seconds on the head, link seconds) to bring the head's inputs (each a message) to it."""
    k = table.head_tensors
    cpu = k * table.comm_cpu_s_per_byte[head] * (table.tokens - own) * table.token_wire_bytes
    return cpu, k * gather_link_s(table, head, senders)
