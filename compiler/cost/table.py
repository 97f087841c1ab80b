"""CostTable: the numbers the planner sees. No torch, no graph; random tables are valid too.

Times are seconds for one layer over the whole batch x sequence, per unit of split work and per
device (aligned with `devices`). Links are dense matrices `alpha_s[i][j]` (per-message latency)
and `beta_s_per_byte[i][j]` (1 / bandwidth), zero on the diagonal. Bytes are per layer held
(weights) or one layer at a time (activations); see `cost/memory.py` for the formulas and
`cost/flops.py` for the FLOP counts behind the times.

A device from a galaxy-profile with `attention_flops_per_s` > 0 has its attention scores (the
SDPA: 4 B S^2 d g FLOPs per group, softmax included in the measured time) charged at that rate
instead of `flops_per_s` plus the weighted softmax; the projections stay at `flops_per_s`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from galaxy.compiler.cost.flops import layer_flops
from galaxy.compiler.cost.memory import cache_bytes_per_group, layer_bytes
from galaxy.compiler.ir.cluster import Cluster, Device
from galaxy.compiler.ir.schedule import WIRE_BYTES
from galaxy.compiler.ir.summary import ModelSummary

MAX_COLUMN_UNIT = 64  # columns per ILP variable unit, at most
MIN_COLUMN_UNITS = 32  # but keep at least this many units (when the intermediate allows)


@dataclass(frozen=True)
class CostTable:
    model: str
    cluster: str
    devices: tuple[str, ...]
    # model totals
    n_layers: int
    kv_groups: int  # KV heads; each group is heads_per_group query heads
    heads_per_group: int
    columns: int  # MLP intermediate size
    column_unit: int  # the ILP splits columns in multiples of this (it divides `columns`)
    tokens: int  # sequence length
    token_wire_bytes: int  # batch * hidden * wire dtype bytes: one token of the hidden stream
    wire_dtype: str
    # per device, seconds per layer
    flops_per_s: tuple[float, ...]
    attention_s_per_group: tuple[float, ...]  # all attention work of one KV group
    # The GEMMs next to the collectives (hiding_s: the part transfers progress behind):
    attention_in_s_per_group: tuple[float, ...]  # its QKV projections (after the AllGather)
    attention_out_s_per_group: tuple[float, ...]  # its output projection (before the ReduceScatter)
    mlp_s_per_column: tuple[float, ...]
    mlp_in_s_per_column: tuple[float, ...]
    mlp_out_s_per_column: tuple[float, ...]
    connective_s_per_token: tuple[float, ...]  # both connective blocks of a layer
    prologue_s: tuple[float, ...]  # whole sequence, once per forward
    epilogue_s: tuple[float, ...]
    comm_cpu_s_per_byte: tuple[float, ...]
    mem_bytes: tuple[int, ...]
    # links
    alpha_s: tuple[tuple[float, ...], ...]
    beta_s_per_byte: tuple[tuple[float, ...], ...]
    # bytes
    weight_bytes_per_group: int
    weight_bytes_per_column: int
    connective_bytes_per_layer: int
    act_bytes_per_group: int
    act_bytes_per_column: int
    act_bytes_per_token: int
    buffer_bytes: int
    prologue_bytes: int
    epilogue_bytes: int
    # hidden-stream tensors a stage hand-off and the head's gather move (ModelSummary)
    entry_tensors: int = 1
    head_tensors: int = 1
    # ModelSummary.parallel_block_inputs: 0, or the tensors a parallel block's all-gather carries
    parallel_block_inputs: int = 0
    # Fixed seconds per block a device runs, whatever its share: the dispatch of a block's ops,
    # which matters when a block moves one token (a decode step: cost/decode.py). Empty: none.
    block_overhead_s: tuple[float, ...] = ()
    # per device: the share of a GEMM's time its transfers progress behind (empty: all of it), and
    # GEMM speed by rows per GEMM as (rows, relative speed) points (empty: cost/tiling.py's default)
    overlap_efficiency: tuple[float, ...] = ()
    gemm_rows_speed: tuple[tuple[tuple[int, float], ...], ...] = ()
    # True when each device has one network card for all its transfers (a switched home LAN);
    # False when every pair of devices has its link's full rate (cost/actions.py, direct)
    shared_card: bool = False
    # per device: the attention core of one KV group (scores, softmax, weighted values; whole
    # sequence, seconds); empty in hand-made tables: attention minus its projections
    attention_core_s_per_group: tuple[float, ...] = ()

    @property
    def parallel_blocks(self) -> bool:
        return self.parallel_block_inputs > 0

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @property
    def token_elements(self) -> int:
        """Elements of one token of the hidden stream (batch x hidden)."""
        return self.token_wire_bytes // WIRE_BYTES[self.wire_dtype]

    @property
    def heads(self) -> int:
        return self.kv_groups * self.heads_per_group

    @property
    def column_units(self) -> int:
        return self.columns // self.column_unit

    def overhead_s(self, device: int, busy: float = 1.0) -> float:
        """The fixed cost of one block on `device` if it has work in it (`busy` > 0), else 0."""
        return self.block_overhead_s[device] if self.block_overhead_s and busy > 0 else 0.0
    def hiding_s(self, device: int, gemm_s: float) -> float:
        """The part of `device`'s GEMM of `gemm_s` seconds its transfers progress behind."""
        return gemm_s * (self.overlap_efficiency[device] if self.overlap_efficiency else 1.0)

    def index(self, name: str) -> int:
        return self.devices.index(name)

    def speed_order(self) -> tuple[int, ...]:
        """Device indices fastest first (flops_per_s, then cluster order): the tie-break order."""
        return tuple(sorted(range(self.n_devices), key=lambda d: (-self.flops_per_s[d], d)))

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        rows = [f"cost table {self.model} on {self.cluster}: {self.n_layers} layers, "
                f"{self.kv_groups} KV groups x {self.heads_per_group} heads, {self.column_units} column "
                f"units of {self.column_unit}, {self.tokens} tokens of {self.token_wire_bytes} B",
                f"  {'device':<14}{'att ms/grp':>11}{'mlp ms/unit':>12}{'con us/tok':>11}{'mem GiB':>9}"]
        for d, name in enumerate(self.devices):
            rows.append(f"  {name:<14}{self.attention_s_per_group[d] * 1e3:>11.3f}"
                        f"{self.mlp_s_per_column[d] * self.column_unit * 1e3:>12.3f}"
                        f"{self.connective_s_per_token[d] * 1e6:>11.2f}{self.mem_bytes[d] / 2**30:>9.2f}")
        return "\n".join(rows)


def choose_column_unit(columns: int) -> int:
    """Largest divisor of `columns` <= MAX_COLUMN_UNIT that leaves >= MIN_COLUMN_UNITS units."""
    best = 1
    for unit in range(1, MAX_COLUMN_UNIT + 1):
        if columns % unit == 0 and columns // unit >= MIN_COLUMN_UNITS:
            best = unit
    return best


def build_cost_table(summary: ModelSummary, cluster: Cluster, wire_dtype: str = "float32",
                     column_unit: int | None = None, cache_tokens: int = 0) -> CostTable:
    """The cost table of `summary` on `cluster`. `cache_tokens` > 0: a generation bundle, whose
    ranks also keep the keys and values of that many tokens for each KV group of each layer they
    hold (cost/memory.py cache_bytes_per_group), counted with the group's weights."""
    if summary.heads % summary.kv_heads:
        raise ValueError(f"{summary.heads} heads are not whole groups of {summary.kv_heads} KV heads")
    unit = column_unit or choose_column_unit(summary.intermediate)
    if summary.intermediate % unit:
        raise ValueError(f"column unit {unit} does not divide intermediate {summary.intermediate}")
    fl = layer_flops(summary)
    by = layer_bytes(summary)
    devs = cluster.devices

    def per_device(flops: float) -> tuple[float, ...]:
        return tuple(flops / d.flops_per_s for d in devs)

    sdpa_flops_per_group = 4.0 * summary.batch * summary.seq_len ** 2 * summary.head_dim \
        * summary.heads_per_kv_group

    def attention_core_s(d: Device) -> float:
        if d.attention_flops_per_s <= 0:
            return fl.attention_core_per_group / d.flops_per_s
        return sdpa_flops_per_group / d.attention_flops_per_s

    def attention_s(d: Device) -> float:
        if d.attention_flops_per_s <= 0:
            return fl.attention_per_group / d.flops_per_s
        projections = fl.attention_in_per_group + fl.attention_out_per_group
        return projections / d.flops_per_s + attention_core_s(d)

    links = [[cluster.link(a.name, b.name) if a.name != b.name else None for b in devs] for a in devs]
    return CostTable(
        model=summary.name, cluster=cluster.name, devices=cluster.names,
        n_layers=summary.n_layers, kv_groups=summary.kv_heads, heads_per_group=summary.heads_per_kv_group,
        columns=summary.intermediate, column_unit=unit, tokens=summary.seq_len,
        token_wire_bytes=summary.batch * summary.hidden * WIRE_BYTES[wire_dtype],
        wire_dtype=wire_dtype,
        flops_per_s=tuple(d.flops_per_s for d in devs),
        attention_s_per_group=tuple(attention_s(d) for d in devs),
        attention_in_s_per_group=per_device(fl.attention_in_per_group),
        attention_out_s_per_group=per_device(fl.attention_out_per_group),
        mlp_s_per_column=per_device(fl.mlp_per_column),
        mlp_in_s_per_column=per_device(fl.mlp_in_per_column),
        mlp_out_s_per_column=per_device(fl.mlp_out_per_column),
        connective_s_per_token=per_device(fl.connective_per_token),
        prologue_s=per_device(summary.prologue_flops),
        epilogue_s=per_device(summary.epilogue_flops),
        comm_cpu_s_per_byte=tuple(d.comm_cpu_s_per_byte for d in devs),
        mem_bytes=tuple(d.mem_bytes for d in devs),
        alpha_s=tuple(tuple(0.0 if lk is None else lk.latency_s for lk in row) for row in links),
        beta_s_per_byte=tuple(tuple(0.0 if lk is None else 1.0 / lk.bandwidth_bytes_per_s for lk in row)
                              for row in links),
        weight_bytes_per_group=by.weight_per_group + cache_bytes_per_group(summary, cache_tokens),
        weight_bytes_per_column=by.weight_per_column,
        connective_bytes_per_layer=by.connective_per_layer,
        act_bytes_per_group=by.act_per_group, act_bytes_per_column=by.act_per_column,
        act_bytes_per_token=by.act_per_token, buffer_bytes=by.buffers,
        prologue_bytes=by.prologue, epilogue_bytes=by.epilogue,
        entry_tensors=summary.layer_entry_tensors, head_tensors=summary.head_input_tensors,
        parallel_block_inputs=summary.parallel_block_inputs,
        overlap_efficiency=tuple(d.overlap_efficiency for d in devs),
        gemm_rows_speed=tuple(d.gemm_rows_speed for d in devs),
        shared_card=cluster.shared_card,
        attention_core_s_per_group=tuple(attention_core_s(d) for d in devs),
    )
