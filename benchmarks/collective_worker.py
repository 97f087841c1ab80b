"""One emulated device's part of benchmarks/collectives.py: time ring and direct collectives.

    python -m benchmarks.collective_worker RANK WORLD MASTER_ADDR PORT CONFIG_JSON

CONFIG_JSON: {"shares": [...], "seq_len": 256, "models": {name: {"hidden", "heads", "head_dim",
"intermediate"}}, "repeat": R, "warmup": W, "calls": C, "layers": L, "threads": T, "timeout_s": S}.
Tokens, heads and MLP columns are split in proportion to the shares (as a proportional plan
would). A single collective (alone, or fused with its GEMM) runs C times per round with a
barrier before each call, so consecutive calls cannot overlap on the links (in a model the
next collective waits for this one's result). An HMP layer (QKV, attention, out projection,
MLP, every block between an all-gather and a reduce-scatter, the residual adds on this rank's
tokens) runs L times back to back per round, as a model's layers do: a device under a CPU
quota reaches its steady state, throttled for part of every period, only when it keeps busy.
All cases round-robin, so the VM's noise hits all alike. Rank 0 prints one JSON line:
{case: [per rank: seconds per call, per round]}.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from galaxy.runtime import rendezvous
from galaxy.runtime.collectives import all_gather, reduce_scatter
from galaxy.runtime.direct import (all_gather_direct, all_gather_linear_direct, linear_reduce_scatter_direct,
                                   reduce_scatter_direct)
from galaxy.runtime.overlap import all_gather_linear, linear_reduce_scatter
from galaxy.runtime.p2p import barrier
from galaxy.runtime.ring import Ring
from galaxy.runtime.splits import split_sizes


def model_cases(name: str, shape: dict, shares: list[float], seq_len: int,
                ring: Ring) -> dict[str, tuple[Callable, bool]]:
    """Case name "model op algorithm" -> (a call that runs it once on this rank, whether it is a
    whole layer, run back to back)."""
    me = ring.index
    tokens = split_sizes(seq_len, shares)
    heads = split_sizes(shape["heads"], shares)[me]
    columns = split_sizes(shape["intermediate"], shares)[me]
    hidden, head_dim = shape["hidden"], shape["head_dim"]
    gen = torch.Generator().manual_seed(me)

    def randn(*size):
        return torch.randn(*size, generator=gen) / size[-1] ** 0.5  # keeps a chain of layers finite
    x_local, x_full, partial = randn(1, tokens[me], hidden), randn(1, seq_len, hidden), randn(1, seq_len, hidden)
    w_qkv, b_qkv = randn(3 * heads * head_dim, hidden), randn(3 * heads * head_dim)
    w_out, w_in, b_in = randn(hidden, heads * head_dim), randn(columns, hidden), randn(columns)
    h_full, w_down = randn(1, seq_len, columns), randn(hidden, columns)
    others = randn(1, seq_len, hidden)
    fused = {"plain": (lambda x, w, b: F.linear(all_gather(x, tokens, ring), w, b),
                       lambda h, w: reduce_scatter(F.linear(h, w), tokens, ring)),
             "ring": (lambda x, w, b: all_gather_linear(x, w, b, tokens, ring, 1),
                      lambda h, w: linear_reduce_scatter(h, w, tokens, ring, 1)),
             "direct": (lambda x, w, b: all_gather_linear_direct(x, w, b, tokens, ring),
                        lambda h, w: linear_reduce_scatter_direct(h, w, tokens, ring)),
             # the same GEMMs and copies with nothing sent: the layer's compute on this rank
             "compute": (lambda x, w, b: F.linear(torch.cat([x, others[:, :seq_len - x.shape[1]]], 1), w, b),
                         lambda h, w: F.linear(h, w)[:, :tokens[me]].clone())}

    def layer(gather_linear, linear_scatter):
        def run():
            qkv = gather_linear(x_local, w_qkv, b_qkv)
            q, k, v = (t.view(1, seq_len, heads, head_dim).transpose(1, 2) for t in qkv.split(heads * head_dim, -1))
            attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, seq_len, -1)
            hidden_local = linear_scatter(attention, w_out) + x_local
            h = F.gelu(gather_linear(hidden_local, w_in, b_in))
            return linear_scatter(h, w_down) + hidden_local
        return run
    cases = {
        "all_gather ring": (lambda: all_gather(x_local, tokens, ring), False),
        "all_gather direct": (lambda: all_gather_direct(x_local, tokens, ring), False),
        "reduce_scatter ring": (lambda: reduce_scatter(partial, tokens, ring), False),
        "reduce_scatter direct": (lambda: reduce_scatter_direct(partial, tokens, ring), False),
        "qkv_gemm alone": (lambda: F.linear(x_full, w_qkv, b_qkv), False),
        "down_gemm alone": (lambda: F.linear(h_full, w_down), False),
    }
    for algorithm, (gather_linear, linear_scatter) in fused.items():
        if algorithm != "compute":
            cases[f"gather+qkv {algorithm}"] = (lambda g=gather_linear: g(x_local, w_qkv, b_qkv), False)
            cases[f"down+scatter {algorithm}"] = (lambda s=linear_scatter: s(h_full, w_down), False)
        cases[f"layer {algorithm}"] = (layer(gather_linear, linear_scatter), True)
    return {f"{name} {case}": value for case, value in cases.items()}


def main(argv: list[str]) -> int:
    rank, world, addr, port, config = int(argv[0]), int(argv[1]), argv[2], int(argv[3]), json.loads(argv[4])
    torch.set_num_threads(config["threads"])
    rendezvous.connect(rank, world, addr, port, config["timeout_s"])
    try:
        ring = Ring(tuple(range(world)), rank, config["timeout_s"])
        cases = {}
        for name, shape in config["models"].items():
            cases.update(model_cases(name, shape, config["shares"], config["seq_len"], ring))
        seconds = {case: [] for case in cases}
        with torch.inference_mode():
            for round_ in range(config["warmup"] + config["repeat"]):
                for case, (run, is_layer) in cases.items():
                    elapsed = _layers(run, config["layers"], ring, case) if is_layer else _calls(run, config["calls"], ring, case)
                    if round_ >= config["warmup"]:
                        seconds[case].append(elapsed)
        mine = torch.tensor([seconds[case] for case in cases], dtype=torch.float64)
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        if rank == 0:
            print(json.dumps({case: [t[i].tolist() for t in everyone] for i, case in enumerate(cases)}))
    finally:
        rendezvous.close()
    return 0


def _calls(run: Callable, calls: int, ring: Ring, case: str) -> float:
    """Mean seconds of `calls` calls, a barrier before each (not timed)."""
    total = 0.0
    for _ in range(calls):
        barrier(ring, f"barrier before {case}")
        start = time.perf_counter()
        run()
        total += time.perf_counter() - start
    return total / calls


def _layers(run: Callable, layers: int, ring: Ring, case: str) -> float:
    """Seconds per layer of `layers` layers back to back after one barrier."""
    barrier(ring, f"barrier before {case}")
    start = time.perf_counter()
    for _ in range(layers):
        run()
    return (time.perf_counter() - start) / layers


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
