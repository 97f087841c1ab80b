"""The cost of a decode step: one token through the model, against the key/value cache.

One token makes every GEMM a GEMV: it reads each weight once and does 2 FLOPs per weight, so it
runs at the rate memory delivers the weights, not at the GEMM rate. Attention reads the cache of
the context besides. Each block also pays a fixed dispatch cost per op, which is what a tiny
model's step is made of. Per device d (a decode table is a CostTable whose `tokens` is 1, so
predict() walks a decode plan like any other):

    attention per KV group  max(W_g + C_g(c), 2 F_g) / gemv[d]        W_g weight bytes (memory.py),
    MLP per column          W_c / gemv[d]                              C_g(c) = 2 e c d cache bytes of
    connective per token    as for prefill (elementwise, tiny)         c context tokens
    head (epilogue)         H V e / gemv[d]                            the LM head's weights
    every block             + OPS x dispatch[d]                        (block_overhead_s)

    gemv[d]     = Device.gemv_bytes_per_s, else GEMV_BYTES_PER_FLOP x flops_per_s
    dispatch[d] = Device.dispatch_s_per_op, else DISPATCH_FLOPS / flops_per_s

The defaults come from the development machine (docs/GENERATION.md): one core reads a GEMV's
weights at 8 GB/s beside 80 GFLOP/s of GEMM, and an op costs about 5 us to dispatch;
`galaxy-profile` measures both. Collectives are priced per message (cost/actions.py): with a few
KB per message, latency, not bandwidth, is what a step's all-reduces cost.

The cache hand-off (a decode layout other than the prefill's head split): each layer's keys and
values of the prompt move from the ranks that hold its heads in the prefill to the rank that
decodes it, all posted at once; each receiver takes its pieces one after another:

    handoff = max over receivers r of  max alpha[s][r] + sum_s beta[s][r] 2 e p d g_s
              (p prompt tokens, g_s KV groups sender s holds of the layers r decodes)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from galaxy.compiler.cost.memory import cache_bytes_per_group, layer_bytes, plan_memory_bytes
from galaxy.compiler.cost.table import CostTable, build_cost_table
from galaxy.compiler.ir.cluster import Cluster, Device
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary

GEMV_BYTES_PER_FLOP = 0.1  # 8 GB/s of GEMV weights per 80 GFLOP/s of GEMM, measured on one core here
DISPATCH_FLOPS = 4e5  # one op's fixed cost in GEMM FLOPs: 5 us at 80 GFLOP/s
OPS_PER_BLOCK = 12  # ops a block dispatches, on average (attention ~16, MLP ~6, connective ~8)


def gemv_bytes_per_s(device: Device) -> float:
    return device.gemv_bytes_per_s or GEMV_BYTES_PER_FLOP * device.flops_per_s


def dispatch_s(device: Device) -> float:
    return device.dispatch_s_per_op or DISPATCH_FLOPS / device.flops_per_s


def build_decode_table(summary: ModelSummary, cluster: Cluster, context_tokens: int,
                       wire_dtype: str = "float32") -> CostTable:
    """The cost table of one decode step of `summary` (the one-token capture) at a context of
    `context_tokens`; its memory figures are the decode step's (cache not included)."""
    if summary.seq_len != 1:
        raise ValueError(f"a decode table is for the one-token capture, not {summary.seq_len} tokens")
    base = build_cost_table(summary, cluster, wire_dtype)
    by = layer_bytes(summary)
    g, d, e = summary.heads_per_kv_group, summary.head_dim, summary.dtype_bytes
    group_flops = 2.0 * summary.hidden * d * (2 * g + 2) + 4.0 * context_tokens * d * g
    group_bytes = by.weight_per_group + cache_bytes_per_group(summary, context_tokens)
    head_bytes = summary.epilogue_flops / 2 * e  # the LM head does 2 FLOPs per weight it reads
    rates = [gemv_bytes_per_s(dev) for dev in cluster.devices]
    none = tuple(0.0 for _ in cluster.devices)
    return replace(
        base,
        attention_s_per_group=tuple(max(group_bytes, 2 * group_flops * e / 4) / r for r in rates),
        mlp_s_per_column=tuple(by.weight_per_column / r for r in rates),
        attention_in_s_per_group=none, attention_out_s_per_group=none,  # nothing overlaps a step
        mlp_in_s_per_column=none, mlp_out_s_per_column=none,
        epilogue_s=tuple(head_bytes / r for r in rates),
        block_overhead_s=tuple(OPS_PER_BLOCK * dispatch_s(dev) for dev in cluster.devices),
    )


# (layer, sender rank, receiver rank, first group in the sender's prefill cache, first group in the
# receiver's decode cache, KV groups)
CacheMove = tuple[int, int, int, int, int, int]


def handoff_s(moves: list[CacheMove], devices: tuple[str, ...], table: CostTable, summary: ModelSummary,
              prompt_tokens: int) -> float:
    """Seconds to move the prompt's keys and values as `moves` say (cache_moves): every piece posted
    at once, each receiver taking its pieces one after another."""
    per_receiver: dict[int, dict[int, float]] = {}
    for _, sender, receiver, _, _, groups in moves:
        if sender != receiver:
            moved = per_receiver.setdefault(receiver, {})
            moved[sender] = moved.get(sender, 0.0) + groups * cache_bytes_per_group(summary, prompt_tokens)
    worst = 0.0
    for receiver, senders in per_receiver.items():
        r = table.index(devices[receiver])
        link = [(table.alpha_s[table.index(devices[s])][r], table.beta_s_per_byte[table.index(devices[s])][r] * n)
                for s, n in senders.items()]
        worst = max(worst, max(a for a, _ in link) + sum(b for _, b in link))
    return worst


def cache_moves(prefill: Plan, decode: Plan, kv_groups: int) -> list[CacheMove]:
    """Where each decode rank's cache comes from: for every layer it decodes and every run of KV
    groups it holds there, the prefill rank that computed them (itself when it can: a local copy).
    A decode plan that keeps the prefill's head split needs none: the prefill writes its cache."""
    moves = []
    for stage in decode.stages:
        for layer in stage.layers:
            source = next(s for s in prefill.stages if layer in s.layers)
            for j, receiver in enumerate(stage.ranks):
                wanted = group_range(stage, j, kv_groups)
                holders = {rank: group_range(source, i, kv_groups) for i, rank in enumerate(source.ranks)}
                senders = [_holder(holders, receiver, group) for group in wanted]
                for sender, run in _runs(senders, wanted.start):
                    moves.append((layer, sender, receiver, run.start - holders[sender].start,
                                  run.start - wanted.start, len(run)))
    return moves


def _holder(holders: dict[int, range], receiver: int, group: int) -> int:
    """The rank to take `group` from: the receiver if it holds it, else the first that does."""
    if group in holders.get(receiver, range(0)):
        return receiver
    return next(rank for rank, groups in holders.items() if group in groups)


def _runs(senders: list[int], first: int) -> list[tuple[int, range]]:
    """Consecutive groups with the same sender, as (sender, range of groups)."""
    runs: list[tuple[int, range]] = []
    for offset, sender in enumerate(senders):
        group = first + offset
        if runs and runs[-1][0] == sender:
            runs[-1] = (sender, range(runs[-1][1].start, group + 1))
        else:
            runs.append((sender, range(group, group + 1)))
    return runs


def group_range(stage, index: int, kv_groups: int) -> range:
    """The KV groups rank `index` of `stage` holds (all of them unless the stage shards weights)."""
    if not stage.schedule.shards_weights:
        return range(kv_groups)
    start = sum(stage.kv_heads_per_rank[:index])
    return range(start, start + stage.kv_heads_per_rank[index])


@dataclass(frozen=True)
class GenerationMemory:
    """What one device holds in a generation bundle, in bytes."""

    prefill: int  # the prefill's weights and activations (cost/memory.py rank_memory_bytes)
    prefill_cache: int  # the prompt's keys and values it computes, when decode holds them elsewhere
    decode_weights: int  # decode weights the prefill's share does not already hold
    decode_cache: int  # keys and values of max_len tokens of the heads and layers it decodes

    @property
    def total(self) -> int:
        return self.prefill + self.prefill_cache + self.decode_weights + self.decode_cache


def generation_memory(prefill: Plan, decode: Plan, prefill_table: CostTable, summary: ModelSummary,
                      decode_summary: ModelSummary, max_len: int, keep: bool) -> dict[str, GenerationMemory]:
    """Bytes each device of the prefill plan holds to generate with `decode` (`prefill_table`: the
    prefill's cost table without cache). With `keep` the prefill writes straight into the decode
    cache; otherwise it writes a prompt-sized cache that moves, and decode layers whose share
    differs from the prefill's need weights of their own."""
    base = plan_memory_bytes(prefill, prefill_table)
    by = layer_bytes(decode_summary)
    out = {}
    for rank, name in enumerate(prefill.devices):
        prompt_cache = decode_cache = extra = 0
        for layer in range(summary.n_layers):
            held = _holding(prefill, rank, layer, summary)
            wanted = _holding(decode, rank, layer, summary)
            if held and not keep:
                prompt_cache += len(held[0]) * cache_bytes_per_group(summary, summary.seq_len)
            if wanted:
                decode_cache += len(wanted[0]) * cache_bytes_per_group(summary, max_len)
                if wanted != held:
                    extra += (len(wanted[0]) * by.weight_per_group + len(wanted[1]) * by.weight_per_column
                              + by.connective_per_layer)
        out[name] = GenerationMemory(base.get(name, 0), prompt_cache, extra, decode_cache)
    return out


def _holding(plan: Plan, rank: int, layer: int, summary: ModelSummary) -> tuple[range, range] | None:
    """(KV groups, MLP columns) `rank` holds of `layer` in `plan`, or None when it runs none of it."""
    stage = next((s for s in plan.stages if layer in s.layers and rank in s.ranks), None)
    if stage is None:
        return None
    j = stage.ranks.index(rank)
    if not stage.schedule.shards_weights:
        return range(summary.kv_heads), range(summary.intermediate)
    columns_start = sum(stage.columns_per_rank[:j])
    return (group_range(stage, j, summary.kv_heads),
            range(columns_start, columns_start + stage.columns_per_rank[j]))


def cache_layout(plan: Plan, rank: int, summary: ModelSummary) -> tuple[tuple[int, int], ...]:
    """(layer, KV groups) of every layer `rank` runs in `plan`: the caches it allocates."""
    return tuple((layer, len(held[0])) for layer in range(summary.n_layers)
                 if (held := _holding(plan, rank, layer, summary)) is not None)
