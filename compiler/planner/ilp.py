"""ILP planner: the latency model of `cost/latency.py`, linearised, for one HMP stage.

Solved once per number of used devices k = 1..N, so a ring has the constant k - 1 steps; the
best k wins and near ties (solve.TIE_K_REL) go to fewer devices. All layers are identical, so one
variable set serves every layer (the solver does not grow with depth).

Legend. Indices: d, e devices; t tile count in `tile_choices`; l a link class (distinct
(alpha, beta)); q one of the four overlappable GEMMs (attention in/out, MLP in/out).
Constants come from the CostTable (per layer, whole sequence): a[d] attention s/group,
c[d] MLP s/column, U column unit, k_con[d] connective s/token, P[d] prologue s, E[d] epilogue s,
kappa[d] comm CPU s/byte, b token wire bytes, S tokens, L layers, alpha/beta link matrices,
Gq[d] the overlappable GEMM time of q on d (a_in G, a_out G, U c_in C, U c_out C), M big-M
constants (each the largest value its row's right-hand side can take).
    G[d] in 0..Gtot   KV groups            C[d] in 0..Ctot   column units
    X[d] in 0..S      tokens               u[d], z[d]        binary: used, head (rank 0)
    s[t]              binary: tiles = t    w[l]              binary: a ring link is of class l
    m                 largest token chunk  T_pro, T_att, T_con, T_mlp  block epigraphs (max over d)
    R[t]              ring(t): link time of one collective, all t tiles (cost/collectives.py)
    Ex[q]             exposed link time of collective q     T_gat  gather to rank 0 + its CPU
    T_sca             link time of rank 0's scatter of the layer inputs   (k_in entry tensors, h head inputs)
Objective (= predict(plan) for the plan read back):
    min T_pro + T_sca + L (T_att + T_con + T_mlp + sum_q Ex[q]) + sum_d E[d] z[d] + T_gat  + eps * tie-break
Parallel attention/MLP blocks (table.parallel_block_inputs = k_b > 0, GPT-J, NeoX, Phi) have one
tensor-parallel block a layer, T_att its epigraph (T_mlp = 0), and two collectives instead of four,
q in (block_in, block_out), with Gq = (a_in G + U c_in C) [k_b = 1: one fused input GEMM; else 0]
and a_out G + U c_out C; its all-gather carries k_b tensors, so with k_b > 1 its ring is R_in[t]
(b replaced by k_b b; such models plan with tiles 1):
    block[d]           T_att >= a[d] G[d] + U c[d] C[d] + (k_b + 1) kappa[d] 2 (k - 1)/k S b u[d]
Rows (one add_* function per family):
    total_*            sum_d G = Gtot, sum_d C = Ctot, sum_d X = S, sum_d z = 1, sum_d u = k, sum_t s = 1
    use_*[d]           G <= Gtot u, C <= Ctot u, X <= S u, z <= u        (an unused device gets nothing)
    mem[d]             L (G w_g + U C w_c + conn u) + G a_g + U C a_c + X a_t + (buffers + prologue) u
                       + epilogue z <= mem[d]                              (cost/memory.py)
    prologue[d]        T_pro >= P[d] u[d]
    scatter_cpu[d]     T_pro >= P[d] u[d] + k_in kappa[d] b (S z[d] - X[d])   (the head sends S - X[d] tokens)
    scatter[d]         T_sca >= k_in sum_{e != d} (alpha[d][e] u[e] + beta[d][e] b X[e]) - M (1 - z[d])
    attention[d]       T_att >= a[d] G[d] + 4 kappa[d] (k - 1)/k S b u[d]   (2 collectives' CPU)
    connective[d]      T_con >= k_con[d] X[d]
    mlp[d]             T_mlp >= U c[d] C[d] + 4 kappa[d] (k - 1)/k S b u[d]
    *_tiled[t,d]       the same + (slow[t,d] - 1) F[d] - M (1 - s[t]): the block's fused GEMMs F[d]
                       (its Gq, in + out) run in pieces of S / (k t) rows, slow[t,d] times longer
                       (cost/tiling.py; t = 0 runs them whole)
    chunk[d]           m >= X[d]
    ring_*[l,a,b]      w[l] >= [link a->b is in the ring]: the ring is the head, then the other used
                       devices fastest first, so with f[c] = u[c] - z[c] (used, not head):
      ring_next          a->b, a before b: both used non-heads, none between
                         w >= f[a] + f[b] - 1 - sum_{a<c<b} f[c]
      ring_first         a->b, a the head, b the first used non-head
                         w >= z[a] + f[b] - 1 - sum_{c<b, c!=a} f[c]
      ring_last          a->b, b the head, a the last used non-head
                         w >= z[b] + f[a] - 1 - sum_{c>a, c!=b} f[c]
                       (only when links differ; with one link class w = 1)
    ring[t,l]          R[t] >= (k - 1) (t alpha_l + beta_l b m) - M (1 - w[l])
    exposed[q,0]       Ex[q] >= R[0] - M (1 - s[0])                        (no overlap; cost/overlap.py)
    exposed[q,t,d]     Ex[q] >= R[t] - (1 - 1/(k t)) H[d] - M (1 - u[d]) - M (1 - s[t])     t >= 1
    first[q,t,d]       Ex[q] >= R[t] / ((k - 1) t) - H[d] / k - M (1 - u[d]) - M (1 - s[t])  t >= 1
                       (H[d] = Gq[d] times d's overlap efficiency; R[0] moves whole chunks, as R[1])
    gather[d]          T_gat >= h sum_{e != d} (alpha[e][d] u[e] + beta[e][d] b X[e])   (h head input tensors)
                                + kappa[d] b (S u[d] - X[d]) - M (1 - z[d])
    sym[d,e]           u[d] >= u[e] for identical devices d before e (only when all links are equal)
Tie-break (eps, TIE_REL of the latency scale): fewer and faster devices (speed order), a faster
head, fewer tiles. Minimisation makes every epigraph variable equal its max, so the objective
without the tie-break is exactly `predict` of the plan read back. Rows count time in
milliseconds (TIME_UNIT_S): in seconds, CBC's absolute tolerances (1e-7) hide real differences
between small plans and it stops early; memory rows count MiB.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace

import pulp

from galaxy.compiler.cost.collectives import collective_cpu_s
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.cost.tiling import fused_pieces, tile_slowdown
from galaxy.compiler.errors import SolverError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.assemble import Split, hmp_plan
from galaxy.compiler.planner.search_space import TILE_CHOICES
from galaxy.compiler.planner.solvers import solve

log = logging.getLogger(__name__)

TIE_REL = 1e-7  # tie-break weight, relative to the latency scale
MIB = float(2 ** 20)
TIME_UNIT_S = 1e-3  # the ILP counts time in milliseconds
TIME_FIELDS = ("attention_s_per_group", "attention_in_s_per_group", "attention_out_s_per_group",
               "mlp_s_per_column", "mlp_in_s_per_column", "mlp_out_s_per_column", "connective_s_per_token",
               "prologue_s", "epilogue_s", "comm_cpu_s_per_byte", "alpha_s", "beta_s_per_byte")
BLOCKS_Q = ("attention_in", "attention_out", "mlp_in", "mlp_out")
PARALLEL_BLOCKS_Q = ("block_in", "block_out")  # a parallel block's two collectives


def overlapped(table: CostTable) -> tuple[str, ...]:
    """The collectives of a layer whose link time may hide behind a GEMM."""
    return PARALLEL_BLOCKS_Q if table.parallel_blocks else BLOCKS_Q


@dataclass
class SplitVars:
    G: dict[int, pulp.LpVariable]
    C: dict[int, pulp.LpVariable]
    X: dict[int, pulp.LpVariable]
    u: dict[int, pulp.LpVariable]
    z: dict[int, pulp.LpVariable]


@dataclass
class TimeVars:
    pro: pulp.LpVariable
    att: pulp.LpVariable
    con: pulp.LpVariable
    mlp: pulp.LpVariable
    m: pulp.LpVariable
    gat: pulp.LpVariable
    sca: pulp.LpVariable
    s: dict[int, pulp.LpVariable]
    R: dict[int, pulp.LpVariable]
    Ex: dict[str, pulp.LpVariable]
    w: dict[int, pulp.LpVariable] = field(default_factory=dict)
    R_in: dict[int, pulp.LpVariable] = field(default_factory=dict)  # a parallel block's AG of k_b > 1 tensors


@dataclass(frozen=True)
class KResult:
    """The best plan with exactly k devices, or why there is none."""

    k: int
    status: str  # optimal | feasible (time limit) | infeasible | no solution (time limit) | skipped
    latency_s: float | None = None  # predict(plan)
    plan: Plan | None = None
    solve_s: float = 0.0
    objective_s: float | None = None  # the ILP's latency expression at the solution (== latency_s)


# --- variables -------------------------------------------------------------------------------
def add_split_vars(prob: pulp.LpProblem, table: CostTable) -> SplitVars:
    def ints(prefix: str, ub: int) -> dict[int, pulp.LpVariable]:
        return {d: prob.add_variable(f"{prefix}[{d}]", 0, ub, cat="Integer") for d in range(table.n_devices)}

    def bins(prefix: str) -> dict[int, pulp.LpVariable]:
        return {d: prob.add_variable(f"{prefix}[{d}]", cat="Binary") for d in range(table.n_devices)}

    return SplitVars(G=ints("G", table.kv_groups), C=ints("C", table.column_units), X=ints("X", table.tokens),
                     u=bins("u"), z=bins("z"))


def add_time_vars(prob: pulp.LpProblem, tile_choices: tuple[int, ...], table: CostTable) -> TimeVars:
    def pos(name: str) -> pulp.LpVariable:
        return prob.add_variable(name, 0)

    wide_gather = table.parallel_block_inputs > 1
    return TimeVars(pro=pos("T_pro"), att=pos("T_att"), con=pos("T_con"), mlp=pos("T_mlp"), m=pos("m"),
                    gat=pos("T_gat"), sca=pos("T_sca"), s={t: prob.add_variable(f"s[{t}]", cat="Binary") for t in tile_choices},
                    R={t: pos(f"R[{t}]") for t in tile_choices}, Ex={q: pos(f"Ex[{q}]") for q in overlapped(table)},
                    R_in={t: pos(f"R_in[{t}]") for t in tile_choices} if wide_gather else {})


def labels(table: CostTable) -> tuple[str, ...]:
    """Device names for row names. PuLP maps '-', '[', ']' ... to '_' in rows, so names that
    then collide (e.g. 'a-b' and 'a_b') get their index in front."""
    clean = [re.sub(r"[^A-Za-z0-9.]", "_", name) for name in table.devices]
    if len(set(clean)) == len(clean):
        return table.devices
    return tuple(f"{d}.{name}" for d, name in enumerate(table.devices))


# --- constraint families ---------------------------------------------------------------------
def add_totals(prob: pulp.LpProblem, table: CostTable, v: SplitVars, k: int | None) -> None:
    prob += (pulp.lpSum(v.G.values()) == table.kv_groups, "total_groups")
    prob += (pulp.lpSum(v.C.values()) == table.column_units, "total_columns")
    prob += (pulp.lpSum(v.X.values()) == table.tokens, "total_tokens")
    prob += (pulp.lpSum(v.z.values()) == 1, "total_head")
    if k is not None:
        prob += (pulp.lpSum(v.u.values()) == k, "total_used")


def add_usage(prob: pulp.LpProblem, table: CostTable, v: SplitVars) -> None:
    for d, name in enumerate(labels(table)):
        prob += (v.G[d] <= table.kv_groups * v.u[d], f"use_groups[{name}]")
        prob += (v.C[d] <= table.column_units * v.u[d], f"use_columns[{name}]")
        prob += (v.X[d] <= table.tokens * v.u[d], f"use_tokens[{name}]")
        prob += (v.z[d] <= v.u[d], f"use_head[{name}]")


def memory_expr(table: CostTable, v: SplitVars, d: int) -> pulp.LpAffineExpression:
    """Bytes device d holds, in MiB (cost/memory.py: rank_memory_bytes, one stage of L layers)."""
    U, L = table.column_unit, table.n_layers
    return (L * (table.weight_bytes_per_group * v.G[d] + U * table.weight_bytes_per_column * v.C[d]
                 + table.connective_bytes_per_layer * v.u[d])
            + table.act_bytes_per_group * v.G[d] + U * table.act_bytes_per_column * v.C[d]
            + table.act_bytes_per_token * v.X[d] + (table.buffer_bytes + table.prologue_bytes) * v.u[d]
            + table.epilogue_bytes * v.z[d]) / MIB


def add_memory(prob: pulp.LpProblem, table: CostTable, v: SplitVars,
               slack: dict[int, pulp.LpVariable] | None = None) -> None:
    for d, name in enumerate(labels(table)):
        extra = slack[d] if slack else 0
        prob += (memory_expr(table, v, d) <= table.mem_bytes[d] / MIB + extra, f"mem[{name}]")


def fused_gemms(table: CostTable, v: SplitVars, d: int) -> dict[str, pulp.LpAffineExpression]:
    """Device d's GEMMs next to each collective q (seconds, whole): what it hides behind, and what
    token tiles slow down."""
    U = table.column_unit
    fused_in = table.parallel_block_inputs == 1  # one input GEMM the parallel block's gather feeds
    gemm = {"attention_in": table.attention_in_s_per_group[d] * v.G[d],
            "attention_out": table.attention_out_s_per_group[d] * v.G[d],
            "mlp_in": U * table.mlp_in_s_per_column[d] * v.C[d],
            "mlp_out": U * table.mlp_out_s_per_column[d] * v.C[d]}
    gemm["block_in"] = (gemm["attention_in"] + gemm["mlp_in"]) * fused_in
    gemm["block_out"] = gemm["attention_out"] + gemm["mlp_out"]
    return gemm


def add_block_max(prob: pulp.LpProblem, table: CostTable, v: SplitVars, tv: TimeVars, k: int) -> None:
    U = table.column_unit
    curves = table.gemm_rows_speed or ((),) * table.n_devices
    for d, name in enumerate(labels(table)):
        cpu = 2 * collective_cpu_s(table, d, k) * v.u[d]
        attention = table.attention_s_per_group[d] * v.G[d]
        mlp = U * table.mlp_s_per_column[d] * v.C[d]
        prob += (tv.pro >= table.prologue_s[d] * v.u[d], f"prologue[{name}]")
        gemm = fused_gemms(table, v, d)
        blocks = {"attention": (tv.att, attention + cpu, gemm["attention_in"] + gemm["attention_out"]),
                  "mlp": (tv.mlp, mlp + cpu, gemm["mlp_in"] + gemm["mlp_out"])}
        if table.parallel_blocks:
            both = (table.parallel_block_inputs + 1) * collective_cpu_s(table, d, k) * v.u[d]
            blocks = {"block": (tv.att, attention + mlp + both, gemm["block_in"] + gemm["block_out"])}
        for row, (epigraph, work, fused) in blocks.items():
            prob += (epigraph >= work, f"{row}[{name}]")
            for t, s in tv.s.items():  # fused GEMMs run in pieces (cost/tiling.py)
                extra = tile_slowdown(curves[d], table.tokens, fused_pieces("AG", t, k)) - 1
                if extra > 0:
                    M = extra * (table.attention_s_per_group[d] * table.kv_groups
                                 + table.mlp_s_per_column[d] * table.columns)
                    prob += (epigraph >= work + extra * fused - M * (1 - s), f"{row}_tiled[{t},{name}]")
        prob += (tv.con >= table.connective_s_per_token[d] * v.X[d], f"connective[{name}]")
        prob += (tv.m >= v.X[d], f"chunk[{name}]")


def link_classes(table: CostTable) -> dict[tuple[float, float], list[tuple[int, int]]]:
    """Directed device pairs grouped by their (alpha, beta), sorted for determinism."""
    classes: dict[tuple[float, float], list[tuple[int, int]]] = {}
    for a in range(table.n_devices):
        for b in range(table.n_devices):
            if a != b:
                classes.setdefault((table.alpha_s[a][b], table.beta_s_per_byte[a][b]), []).append((a, b))
    return dict(sorted(classes.items()))


def add_ring_links(prob: pulp.LpProblem, table: CostTable, v: SplitVars, tv: TimeVars) -> None:
    """w[l] >= 1 when a link of class l joins two ring neighbours (see the module docstring)."""
    pos = {d: i for i, d in enumerate(table.speed_order())}
    free = {c: v.u[c] - v.z[c] for c in range(table.n_devices)}  # used non-head
    for l, (_, pairs) in enumerate(link_classes(table).items()):
        tv.w[l] = w = prob.add_variable(f"w[{l}]", cat="Binary")
        for a, b in pairs:
            na, nb = labels(table)[a], labels(table)[b]
            if pos[a] < pos[b]:
                between = pulp.lpSum(free[c] for c in pos if pos[a] < pos[c] < pos[b])
                prob += (w >= free[a] + free[b] - 1 - between, f"ring_next[{l},{na},{nb}]")
            before = pulp.lpSum(free[c] for c in pos if pos[c] < pos[b] and c != a)
            prob += (w >= v.z[a] + free[b] - 1 - before, f"ring_first[{l},{na},{nb}]")
            after = pulp.lpSum(free[c] for c in pos if pos[c] > pos[a] and c != b)
            prob += (w >= v.z[b] + free[a] - 1 - after, f"ring_last[{l},{na},{nb}]")


def add_ring_time(prob: pulp.LpProblem, table: CostTable, tv: TimeVars, k: int) -> None:
    classes = list(link_classes(table))
    rings = [("ring", tv.R, table.token_wire_bytes), ("ring_in", tv.R_in, table.parallel_block_inputs * table.token_wire_bytes)]
    for row, ring_vars, b in rings:
        for t, R in ring_vars.items():
            for l, (alpha, beta) in enumerate(classes):
                steps = max(t, 1)  # tiles 0: the plain collective, whole chunks
                full = (k - 1) * (steps * alpha + beta * b * table.tokens)
                relax = full * (1 - tv.w[l]) if tv.w else 0
                prob += (R >= (k - 1) * (steps * alpha + beta * b * tv.m) - relax, f"{row}[{t},{l}]")


def add_overlap(prob: pulp.LpProblem, table: CostTable, v: SplitVars, tv: TimeVars, k: int) -> None:
    hiding = {d: {q: table.hiding_s(d, g) for q, g in fused_gemms(table, v, d).items()}
              for d in range(table.n_devices)}
    if k < 2:
        return  # one device: no collectives, Ex = 0
    alpha = max(max(row) for row in table.alpha_s)
    beta = max(max(row) for row in table.beta_s_per_byte)
    for q, Ex in tv.Ex.items():
        R, tensors = (tv.R_in, table.parallel_block_inputs) if q == "block_in" and tv.R_in else (tv.R, 1)
        for t, s in tv.s.items():
            M = (k - 1) * (max(t, 1) * alpha + beta * tensors * table.token_wire_bytes * table.tokens)
            if t == 0:
                prob += (Ex >= R[t] - M * (1 - s), f"exposed[{q},0]")
                continue
            for d, name in enumerate(labels(table)):
                off = M * (1 - v.u[d]) + M * (1 - s)
                prob += (Ex >= R[t] - (1 - 1 / (k * t)) * hiding[d][q] - off, f"exposed[{q},{t},{name}]")
                prob += (Ex >= (1 / ((k - 1) * t)) * R[t] - (1 / k) * hiding[d][q] - off, f"first[{q},{t},{name}]")


def add_gather(prob: pulp.LpProblem, table: CostTable, v: SplitVars, tv: TimeVars) -> None:
    b, S, h = table.token_wire_bytes, table.tokens, table.head_tensors
    for d, name in enumerate(labels(table)):
        others = [e for e in range(table.n_devices) if e != d]
        link = h * pulp.lpSum(table.alpha_s[e][d] * v.u[e] + table.beta_s_per_byte[e][d] * b * v.X[e] for e in others)
        cpu = h * table.comm_cpu_s_per_byte[d] * b * (S * v.u[d] - v.X[d])
        M = h * (sum(table.alpha_s[e][d] + table.beta_s_per_byte[e][d] * b * S for e in others)
                 + table.comm_cpu_s_per_byte[d] * b * S)
        prob += (tv.gat >= link + cpu - M * (1 - v.z[d]), f"gather[{name}]")


def add_scatter(prob: pulp.LpProblem, table: CostTable, v: SplitVars, tv: TimeVars) -> None:
    """Rank 0 computes the layer inputs and sends every other rank its tokens (cost/actions.py SCATTER)."""
    b, S, k = table.token_wire_bytes, table.tokens, table.entry_tensors
    for d, name in enumerate(labels(table)):
        others = [e for e in range(table.n_devices) if e != d]
        cpu = k * table.comm_cpu_s_per_byte[d] * b * (S * v.z[d] - v.X[d])
        prob += (tv.pro >= table.prologue_s[d] * v.u[d] + cpu, f"scatter_cpu[{name}]")
        link = k * pulp.lpSum(table.alpha_s[d][e] * v.u[e] + table.beta_s_per_byte[d][e] * b * v.X[e] for e in others)
        M = k * sum(table.alpha_s[d][e] + table.beta_s_per_byte[d][e] * b * S for e in others)
        prob += (tv.sca >= link - M * (1 - v.z[d]), f"scatter[{name}]")


def identical_devices(table: CostTable, d: int, e: int) -> bool:
    per_device = ("flops_per_s", "attention_s_per_group", "attention_in_s_per_group",
                  "attention_out_s_per_group", "mlp_s_per_column", "mlp_in_s_per_column",
                  "mlp_out_s_per_column", "connective_s_per_token", "prologue_s", "epilogue_s",
                  "comm_cpu_s_per_byte", "mem_bytes")
    return all(getattr(table, f)[d] == getattr(table, f)[e] for f in per_device)


def add_symmetry(prob: pulp.LpProblem, table: CostTable, v: SplitVars) -> None:
    """Identical devices are interchangeable when all links are equal: use the earlier first."""
    if len(link_classes(table)) > 1:
        return
    order = table.speed_order()
    for i, d in enumerate(order):
        for e in order[i + 1:]:
            if identical_devices(table, d, e):
                prob += (v.u[d] >= v.u[e], f"sym[{labels(table)[d]},{labels(table)[e]}]")
                break  # chains d >= e >= f ... follow from consecutive pairs


# --- objective and solve -----------------------------------------------------------------------
def latency_expr(table: CostTable, v: SplitVars, tv: TimeVars) -> pulp.LpAffineExpression:
    return (tv.pro + tv.sca + table.n_layers * (tv.att + tv.con + tv.mlp + pulp.lpSum(tv.Ex.values()))
            + pulp.lpSum(table.epilogue_s[d] * v.z[d] for d in range(table.n_devices)) + tv.gat)


def latency_scale_s(table: CostTable) -> float:
    """The fastest device alone, ignoring memory: an upper bound of the optimum's scale."""
    L = table.n_layers
    return min(table.prologue_s[d] + table.epilogue_s[d]
               + L * (table.kv_groups * table.attention_s_per_group[d]
                      + table.columns * table.mlp_s_per_column[d]
                      + table.tokens * table.connective_s_per_token[d]) for d in range(table.n_devices))


def tie_break_expr(table: CostTable, v: SplitVars, tv: TimeVars) -> pulp.LpAffineExpression:
    order = table.speed_order()
    n = table.n_devices
    weights = pulp.lpSum((i + 1) * (v.u[d] + v.z[d]) for i, d in enumerate(order)) \
        + pulp.lpSum(i * s for i, s in enumerate(tv.s.values()))
    return TIE_REL * latency_scale_s(table) / (2 * n * n + len(tv.s) ** 2) * weights


def in_time_unit(table: CostTable) -> CostTable:
    """The table with every time in TIME_UNIT_S instead of seconds."""
    def scale(value):
        return tuple(scale(x) for x in value) if isinstance(value, tuple) else value / TIME_UNIT_S
    return replace(table, **{f: scale(getattr(table, f)) for f in TIME_FIELDS})


def build_problem(table: CostTable, k: int, tile_choices: tuple[int, ...]):
    """The ILP for k devices; `table` in seconds, the rows and objective in TIME_UNIT_S."""
    table = in_time_unit(table)
    prob = pulp.LpProblem(f"galaxy_k{k}", pulp.LpMinimize)
    v = add_split_vars(prob, table)
    tv = add_time_vars(prob, tile_choices, table)
    add_totals(prob, table, v, k)
    prob += (pulp.lpSum(tv.s.values()) == 1, "total_tiles")
    add_usage(prob, table, v)
    add_memory(prob, table, v)
    add_block_max(prob, table, v, tv, k)
    if k > 1 and len(link_classes(table)) > 1:
        add_ring_links(prob, table, v, tv)
    add_ring_time(prob, table, tv, k)
    add_overlap(prob, table, v, tv, k)
    add_gather(prob, table, v, tv)
    add_scatter(prob, table, v, tv)
    add_symmetry(prob, table, v)
    latency = latency_expr(table, v, tv)
    prob += latency + tie_break_expr(table, v, tv)
    return prob, v, tv, latency


def read_split(table: CostTable, v: SplitVars, tv: TimeVars) -> Split:
    used = tuple(d for d in range(table.n_devices) if v.u[d].value() > 0.5)
    head = next(d for d in used if v.z[d].value() > 0.5)
    rounded = lambda var: int(round(var.value()))  # noqa: E731
    return Split(used=used, head=head,
                 groups={d: rounded(v.G[d]) for d in used},
                 columns={d: rounded(v.C[d]) * table.column_unit for d in used},
                 tokens={d: rounded(v.X[d]) for d in used},
                 tiles=next(t for t, s in tv.s.items() if s.value() > 0.5))


def solve_k(table: CostTable, k: int, tile_choices: tuple[int, ...], backend: str,
            time_limit_s: float, objective: str) -> KResult:
    start = time.perf_counter()
    prob, v, tv, latency = build_problem(table, k, tile_choices)
    status = solve(prob, backend, time_limit_s)
    elapsed = time.perf_counter() - start
    if status not in ("optimal", "feasible (time limit)"):
        return KResult(k, status, solve_s=elapsed)
    plan = hmp_plan(table, read_split(table, v, tv), solver="ilp", objective=objective)
    ilp_latency = pulp.value(latency) * TIME_UNIT_S
    mismatch = abs(ilp_latency - plan.predicted_latency_s) > 1e-6 * max(plan.predicted_latency_s, 1e-12)
    if mismatch and status == "optimal":
        raise SolverError(f"ILP objective {ilp_latency!r} s differs from predict() "
                          f"{plan.predicted_latency_s!r} s for k={k}: the linearisation is out of date")
    log.info("k=%d: %s, %.4f s predicted, solved in %.2f s", k, status, plan.predicted_latency_s, elapsed)
    return KResult(k, status, plan.predicted_latency_s, plan, elapsed, ilp_latency)
