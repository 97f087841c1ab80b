"""Plan.notes: why each device is in or out, what the solver saw. Deterministic text only
(no wall-clock times), so plans stay byte-identical across runs."""
from __future__ import annotations

from typing import Sequence

from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.cost.memory import plan_memory_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.plan import Plan


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def fmt_s(s: float) -> str:
    return f"{s * 1e3:.3f} ms"


def replicated_bytes(table: CostTable) -> int:
    """What every used device holds whatever its share: prologue, norms, collective buffers."""
    return table.prologue_bytes + table.buffer_bytes + table.n_layers * table.connective_bytes_per_layer


def hopeless_devices(table: CostTable) -> dict[int, int]:
    """Devices that cannot hold the replicated part alone, with by how many bytes."""
    need = replicated_bytes(table)
    return {d: need - table.mem_bytes[d] for d in range(table.n_devices) if table.mem_bytes[d] < need}


def ordinal(i: int) -> str:
    return {1: "fastest", 2: "2nd fastest", 3: "3rd fastest"}.get(i, f"{i}th fastest")


def device_notes(table: CostTable, plan: Plan, why_out: dict[int, str]) -> list[str]:
    """One line per cluster device: its share and memory if in, the reason if out."""
    speed = table.speed_order()
    memory = plan_memory_bytes(plan, table)
    stage = plan.stages[0]
    notes = []
    for d, name in enumerate(table.devices):
        where = f"{ordinal(speed.index(d) + 1)}, {table.flops_per_s[d] / 1e9:.1f} GFLOP/s"
        if name not in plan.devices:
            notes.append(f"out {name} ({where}): {why_out.get(d, 'not in the best plan')}")
            continue
        rank = plan.devices.index(name)
        j = stage.ranks.index(rank)
        role = ", head: input, epilogue, output" if rank == 0 else ""
        notes.append(f"in  {name} (rank {rank}, {where}{role}): {stage.heads_per_rank[j]}/{table.heads} heads, "
                     f"{stage.columns_per_rank[j]}/{table.columns} columns, {stage.tokens_per_rank[j]}/"
                     f"{table.tokens} tokens, {fmt_bytes(memory[name])} of {fmt_bytes(table.mem_bytes[d])}")
    return notes


def overlap_note(plan: Plan) -> str:
    stage = plan.stages[0]
    hidden = sum(b.hidden_s * len(stage.layers) for b in plan.predicted_blocks if b.per_layer)
    comm = sum(b.comm_s * len(stage.layers) for b in plan.predicted_blocks if b.per_layer)
    if len(stage.ranks) == 1:
        return "one device: no collectives"
    if stage.schedule.tiles == 0:
        return f"{stage.schedule}, no overlap: {fmt_s(comm)} of link time per forward"
    return f"{stage.schedule}: overlap hides {fmt_s(hidden)} of {fmt_s(comm)} link time per forward"


def block_note(plan: Plan) -> str:
    parts = []
    for b in plan.predicted_blocks:
        times = block_s(b) * (len(plan.stages[b.stage].layers) if b.per_layer else 1)
        parts.append(f"{b.block} {fmt_s(times)}")
    return "predicted per forward: " + ", ".join(parts)


def k_summary(results: Sequence[tuple[int, str, float | None]]) -> str:
    parts = [f"k={k} {fmt_s(lat)}" if lat is not None else f"k={k} {status}" for k, status, lat in results]
    return "best latency by device count: " + ", ".join(parts)
