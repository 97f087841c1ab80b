"""One cost function per schedule action (ir/schedule.py), looked up by its op in `CHARGES`.

Each returns a `Charge`: link seconds, the part of them hidden behind a GEMM, and the CPU seconds
each rank of the stage spends on the action beyond the block's own compute (moving the bytes, and
the slower GEMM of a fused collective's pieces). Legend as in cost/latency.py: n ranks in ring
order, x[r] tokens of rank r, S tokens, b bytes of one token of the hidden stream at the action's
wire dtype, kappa[d] comm CPU seconds per byte, alpha/beta the link matrices, k the hidden-stream
tensors a hand-off moves (entry_tensors) or the head reads (head_tensors).

    AG, RS    ring(t) of the largest chunk (cost/collectives.py); exposed(t, G) of it shows, G the
              GEMM next to it (cost/overlap.py); cpu[r] = kappa 2 (n - 1)/n S b; a parallel block's
              AG carries k tensors (both its inputs): b is k times larger. Fused (t >= 1), the
              GEMM runs in pieces: cpu[r] += (slowdown - 1) G[r] (cost/tiling.py)
    AG, RS    direct (every rank sends its chunk to every peer at once, no forwarding):
     direct     per pair: alpha + max over pairs (i -> j) of beta_ij b x_i (AG; x_j for RS);
                one card a device (table.shared_card): alpha + max_d beta_d b max((n-1) x_d, S - x_d);
                fused at t = 1, max(0, direct - G / n) shows; cpu[r] = kappa b (S + (n - 2) x[r])
    AR        all-reduce of S b bytes, nothing hides, by its algorithm (runtime/reduce.py):
              ring    a reduce-scatter then an all-gather of even chunks, 2 (n - 1) (alpha + beta S b / n);
                      cpu[r] = 2 kappa 2 (n - 1)/n S b (gloo's own all-reduce over every rank)
              star    to ring position 0 and back, its link carrying the others one after another:
                      2 (max_r alpha + sum_r beta S b); cpu 2 kappa (n - 1) S b there, 2 kappa S b elsewhere
              direct  every rank sends to every other at once, its own link one after another:
                      max_r (max_q alpha + sum_q beta S b); cpu[r] = 2 kappa (n - 1) S b
              A decode step's S b is a few KB: the n - 1 latencies in a row of the ring cost more than
              the bytes the other two repeat, so the planner prices all three (planner/decode.py)
    KVAG      the ring of keys and values (2 / g hidden-stream bytes a token), projected and sent in
              t tiles: projection_exposed(t, G) shows, G the key/value projection
    KVATT     the same bytes, exchanged directly (link: the slowest peer's block) or round the ring
              ((n - 1) steps of the largest block) while each rank attends to the blocks in hand:
              what shows is the longest wait of any rank (cost/overlap.py: waiting_s), attending to
              a block of y keys taking f(b) A[d] x y / S^2 (A the attention core of every group; its
              hiding share by the device's overlap efficiency), f(b) the measured cost of b blocks against one
              SDPA; cpu[r] = KVAG's, plus (f(b) - 1) A[d] x[r] / S: the core's extra compute
    SCATTER   rank 0 sends every other rank its tokens, one after another:
              k sum_{r != 0} (alpha + beta x[r] b); cpu k kappa (S - x[0]) b on rank 0 (each other rank
              moves its own few tokens meanwhile)
    REP       nothing (every rank computes the layer inputs itself)
    BCAST     rank 0 sends the k layer inputs whole to every other rank, all posted at once:
              max_r alpha + k sum_r beta S b; cpu k kappa (n - 1) S b on rank 0, k kappa S b elsewhere
    RECV      the previous stage's leader sends every rank of this stage the k tensors whole, one
              rank after another: k sum_r (alpha + beta S b); cpu k kappa S b on each receiver
    SEND      the stage's leader gathers the k tensors by tokens: k sum_{r != leader}
              (alpha + beta x[r] b); cpu k kappa (S - x[leader]) b on the leader (the whole tensors
              then travel under the receiver's RECV)
    GATHER    the head's k inputs gathered to rank 0 (ring position 0): as SEND with rank 0 the leader
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from galaxy.compiler.cost.collectives import collective_cpu_s, gather_link_s, ring_collective_s, ring_step_s
from galaxy.compiler.cost.overlap import (blockwise_attention_factor, direct_order, exposed_s, projection_exposed_s,
                                          ring_arrivals, waiting_s)
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.cost.tiling import fused_pieces, tile_slowdown
from galaxy.compiler.ir.schedule import WIRE_BYTES, Action


@dataclass(frozen=True)
class Charge:
    link_s: float = 0.0
    hidden_s: float = 0.0  # part of link_s hidden behind compute
    cpu_s_per_rank: tuple[float, ...] = ()  # aligned with the site's ring


@dataclass(frozen=True)
class Site:
    """Where an action runs: the stage's devices in ring order and their tokens, the GEMM the action
    may hide behind (the least over the ring, in seconds), and the ranks at the other end of a
    hand-off (RECV: the previous stage's leader)."""

    table: CostTable
    ring: tuple[int, ...]
    tokens: tuple[int, ...]
    gemm_s: float = 0.0
    # each rank's whole GEMM next to the action, in seconds (what token tiles slow down)
    gemm_s_per_rank: tuple[float, ...] = ()
    sender: int | None = None  # RECV: the device sending the whole tensors
    # hidden-stream tensors a hand-off moves (default: the layer entries), or an AG carries (default 1)
    tensors: int | None = None


def token_bytes(table: CostTable, action: Action) -> float:
    """Bytes of one token of the hidden stream at the action's wire dtype."""
    return table.token_elements * WIRE_BYTES[action.wire]


def _ring_collective(action: Action, site: Site, per_token: float) -> tuple[float, tuple[float, ...]]:
    table, n = site.table, len(site.ring)
    link = ring_collective_s(table, site.ring, max(site.tokens), action.tiles, token_bytes=per_token)
    cpu = tuple(collective_cpu_s(table, d, n, token_bytes=per_token) for d in site.ring)
    return link, cpu


def all_gather_or_reduce_scatter(action: Action, site: Site) -> Charge:
    per_token = token_bytes(site.table, action) * (site.tensors or 1)
    if action.algorithm == "direct":
        link, cpu = _direct_collective(action, site, per_token)
        exposed = link if action.tiles < 1 else max(0.0, link - site.gemm_s / len(site.ring))
    else:
        link, cpu = _ring_collective(action, site, per_token)
        exposed = exposed_s(link, action.tiles, site.gemm_s, len(site.ring))
    return Charge(link, link - exposed, _plus_tile_slowdown(action, site, cpu))


def _direct_collective(action: Action, site: Site, per_token: float) -> tuple[float, tuple[float, ...]]:
    table, ring, x, n = site.table, site.ring, site.tokens, len(site.ring)
    if n < 2:
        return 0.0, (0.0,) * n
    S = sum(x)
    if table.shared_card:
        alpha = max(table.alpha_s[a][b] for a in ring for b in ring if a != b)
        link = alpha + max(max(table.beta_s_per_byte[d][e] for e in ring if e != d) * per_token
                           * max((n - 1) * xd, S - xd) for d, xd in zip(ring, x))
    else:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        sent = (lambda i, j: x[i]) if action.op == "AG" else (lambda i, j: x[j])
        link = max(table.alpha_s[ring[i]][ring[j]] + table.beta_s_per_byte[ring[i]][ring[j]] * per_token * sent(i, j)
                   for i, j in pairs)
    cpu = tuple(table.comm_cpu_s_per_byte[d] * per_token * (S + (n - 2) * xd) for d, xd in zip(ring, x))
    return link, cpu


def _plus_tile_slowdown(action: Action, site: Site, cpu: tuple[float, ...]) -> tuple[float, ...]:
    """A fused collective's GEMM runs on pieces of the sequence, slower than on all of it."""
    if not site.gemm_s_per_rank:
        return cpu
    table, n = site.table, len(site.ring)
    curves = table.gemm_rows_speed or ((),) * table.n_devices
    rows = table.tokens / n if action.op == "KVAG" else table.tokens
    pieces = fused_pieces(action.op, action.tiles, n)
    return tuple(c + (tile_slowdown(curves[d], rows, pieces) - 1) * g
                 for c, d, g in zip(cpu, site.ring, site.gemm_s_per_rank))


def all_reduce(action: Action, site: Site) -> Charge:
    table, n = site.table, len(site.ring)
    if n < 2:
        return Charge(cpu_s_per_rank=(0.0,) * n)
    b = token_bytes(table, action)
    whole = table.tokens * b
    kappa = table.comm_cpu_s_per_byte
    if action.algorithm == "star":
        leader, others = site.ring[0], site.ring[1:]
        link = 2 * _posted_at_once(table, leader, others, whole)
        cpu = tuple(2 * kappa[d] * whole * ((n - 1) if d == leader else 1) for d in site.ring)
        return Charge(link, 0.0, cpu)
    if action.algorithm == "direct":
        link = max(_posted_at_once(table, d, [q for q in site.ring if q != d], whole) for d in site.ring)
        return Charge(link, 0.0, tuple(2 * kappa[d] * (n - 1) * whole for d in site.ring))
    link = 2 * (n - 1) * ring_step_s(table, site.ring, whole / n)
    cpu = tuple(2 * collective_cpu_s(table, d, n, token_bytes=b) for d in site.ring)
    return Charge(link, 0.0, cpu)


def _posted_at_once(table: CostTable, device: int, peers: Sequence[int], nbytes: float) -> float:
    """`nbytes` between `device` and each of `peers`, all posted at once: one latency (the worst),
    and the bytes one after another through `device`'s link."""
    if not peers:
        return 0.0
    return (max(table.alpha_s[device][p] for p in peers)
            + sum(table.beta_s_per_byte[device][p] for p in peers) * nbytes)


def broadcast(action: Action, site: Site) -> Charge:
    table, k = site.table, site.tensors or site.table.entry_tensors
    root, others = site.ring[0], site.ring[1:]
    whole = k * table.tokens * token_bytes(table, action)
    kappa = table.comm_cpu_s_per_byte
    cpu = tuple(kappa[d] * whole * (len(others) if d == root else 1) for d in site.ring)
    return Charge(_posted_at_once(table, root, others, whole), 0.0, cpu)


def key_value_gather(action: Action, site: Site) -> Charge:
    table = site.table
    link, cpu = _ring_collective(action, site, 2 * token_bytes(table, action) / table.heads_per_group)
    exposed = projection_exposed_s(link, action.tiles, site.gemm_s, len(site.ring))
    return Charge(link, link - exposed, _plus_tile_slowdown(action, site, cpu))


def key_value_attention(action: Action, site: Site) -> Charge:
    table, n, x, S = site.table, len(site.ring), site.tokens, site.table.tokens
    per_token = 2 * token_bytes(table, action) / table.heads_per_group
    factor = blockwise_attention_factor(sum(1 for xj in x if xj))
    core = [table.kv_groups * attention_core_s(table, d) for d in site.ring]  # every group, whole sequence
    extra = [(factor - 1) * core[j] * x[j] / S for j in range(n)]
    if n < 2:
        return Charge(cpu_s_per_rank=tuple(extra))
    cpu = [collective_cpu_s(table, d, n, token_bytes=per_token) + e for d, e in zip(site.ring, extra)]
    step = ring_collective_s(table, site.ring, max(x), token_bytes=per_token) / (n - 1)
    link = (n - 1) * step if action.algorithm == "ring" else 0.0
    exposed = 0.0
    for j, d in enumerate(site.ring):
        if not x[j]:
            continue
        hiding = [table.hiding_s(d, factor * core[j] * x[j] * y / S ** 2) for y in x]
        if action.algorithm == "ring":
            blocks = ring_arrivals([hiding[(j - s) % n] for s in range(n)], step)
        else:  # every peer's block at once
            blocks = [(_block_arrival_s(table, site, p, j, per_token), hiding[p]) for p in direct_order(x, j)]
            link = max([link, *(arrival for arrival, _ in blocks)])
        exposed = max(exposed, waiting_s(hiding[j], blocks))
    return Charge(link, max(0.0, link - exposed), tuple(cpu))


def attention_core_s(table: CostTable, device: int) -> float:
    """Seconds of the attention core (scores, softmax, weighted values) of one KV group, whole sequence."""
    if table.attention_core_s_per_group:
        return table.attention_core_s_per_group[device]
    return (table.attention_s_per_group[device] - table.attention_in_s_per_group[device]
            - table.attention_out_s_per_group[device])


def _block_arrival_s(table: CostTable, site: Site, sender: int, receiver: int, per_token: float) -> float:
    """When ring position `sender`'s keys and values are in at `receiver`, all sent at once: at the
    pair's rate, or with one card a device, once the sender's card has sent its block to every
    peer and the receiver's card has taken in every peer's (as _direct_collective)."""
    a, b, x = site.ring[sender], site.ring[receiver], site.tokens
    tokens = x[sender]
    if table.shared_card:
        tokens = max((len(x) - 1) * x[sender], sum(x) - x[receiver])
    return table.alpha_s[a][b] + table.beta_s_per_byte[a][b] * per_token * tokens


def _to_one(action: Action, site: Site, tensors: int, outward: bool) -> Charge:
    """`tensors` hidden-stream tensors between ring position 0 and each other rank's tokens: sent
    out from it (`outward`) or gathered to it, one rank after another."""
    table, b = site.table, token_bytes(site.table, action)
    root = site.ring[0]
    others = [(d, x) for d, x in zip(site.ring[1:], site.tokens[1:])]
    link = tensors * gather_link_s(table, root, others, b, outward=outward)
    root_cpu = tensors * table.comm_cpu_s_per_byte[root] * b * (table.tokens - site.tokens[0])
    return Charge(link, 0.0, (root_cpu,) + (0.0,) * len(others))


def scatter(action: Action, site: Site) -> Charge:
    return _to_one(action, site, site.table.entry_tensors, outward=True)


def gather_to_leader(action: Action, site: Site) -> Charge:
    """SEND gathers the hand-off's tensors to the leader; GATHER the head's inputs to rank 0."""
    tensors = site.table.entry_tensors if action.op == "SEND" else site.table.head_tensors
    return _to_one(action, site, site.tensors or tensors, outward=False)


def receive(action: Action, site: Site) -> Charge:
    table, k = site.table, site.tensors or site.table.entry_tensors
    whole = table.tokens * token_bytes(table, action)
    link = k * sum(table.alpha_s[site.sender][d] + table.beta_s_per_byte[site.sender][d] * whole
                   for d in site.ring if d != site.sender)
    cpu = tuple(k * table.comm_cpu_s_per_byte[d] * whole if d != site.sender else 0.0 for d in site.ring)
    return Charge(link, 0.0, cpu)


def replicated(action: Action, site: Site) -> Charge:
    return Charge(cpu_s_per_rank=(0.0,) * len(site.ring))


CHARGES: dict[str, Callable[[Action, Site], Charge]] = {
    "AG": all_gather_or_reduce_scatter, "RS": all_gather_or_reduce_scatter, "AR": all_reduce,
    "KVAG": key_value_gather, "KVATT": key_value_attention, "SCATTER": scatter, "REP": replicated,
    "BCAST": broadcast, "RECV": receive,
    "SEND": gather_to_leader, "GATHER": gather_to_leader,
}


def charge(action: Action, site: Site) -> Charge:
    """The cost of `action` at `site`, by the one cost function of its kind."""
    return CHARGES[action.op](action, site)


def total(charges: Sequence[Charge], ranks: int) -> Charge:
    """Several charges of one block added up."""
    cpu = [0.0] * ranks
    for c in charges:
        for j, seconds in enumerate(c.cpu_s_per_rank):
            cpu[j] += seconds
    return Charge(sum(c.link_s for c in charges), sum(c.hidden_s for c in charges), tuple(cpu))
