"""One emulated device's part of benchmarks/collectives.py: time ring and direct collectives.

    python -m benchmarks.collective_worker RANK WORLD MASTER_ADDR PORT CONFIG_JSON

CONFIG_JSON: {"shares": [...], "seq_len": 256, "models": {name: {"hidden", "heads", "head_dim",
"intermediate"}}, "repeat": R, "warmup": W, "burst": K, "threads": T, "timeout_s": S}. Tokens,
heads and MLP columns are split in proportion to the shares (as a proportional plan would).
Every case runs K times back to back per round (a device under a CPU quota reaches its steady
state, throttled for part of every period, only when it keeps busy; one short call after a
barrier would run on unused quota), all cases round-robin, a barrier before each, so the VM's
noise hits all alike. Rank 0 prints one JSON line: {case: [per rank: seconds per call, per round]}.
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


def model_cases(name: str, shape: dict, shares: list[float], seq_len: int, ring: Ring) -> dict[str, Callable]:
    """Case name "model op algorithm" -> a call that runs it once on this rank."""
    me = ring.index
    tokens = split_sizes(seq_len, shares)
    heads = split_sizes(shape["heads"], shares)[me]
    columns = split_sizes(shape["intermediate"], shares)[me]
    hidden = shape["hidden"]
    gen = torch.Generator().manual_seed(me)
    x_local = torch.randn(1, tokens[me], hidden, generator=gen)
    x_full = torch.randn(1, seq_len, hidden, generator=gen)
    partial = torch.randn(1, seq_len, hidden, generator=gen)
    w_qkv = torch.randn(3 * heads * shape["head_dim"], hidden, generator=gen)
    b_qkv = torch.randn(w_qkv.shape[0], generator=gen)
    h_full = torch.randn(1, seq_len, columns, generator=gen)
    w_down = torch.randn(hidden, columns, generator=gen)
    cases = {
        "all_gather ring": lambda: all_gather(x_local, tokens, ring),
        "all_gather direct": lambda: all_gather_direct(x_local, tokens, ring),
        "reduce_scatter ring": lambda: reduce_scatter(partial, tokens, ring),
        "reduce_scatter direct": lambda: reduce_scatter_direct(partial, tokens, ring),
        "gather+qkv plain": lambda: F.linear(all_gather(x_local, tokens, ring), w_qkv, b_qkv),
        "gather+qkv ring": lambda: all_gather_linear(x_local, w_qkv, b_qkv, tokens, ring, 1),
        "gather+qkv direct": lambda: all_gather_linear_direct(x_local, w_qkv, b_qkv, tokens, ring),
        "down+scatter plain": lambda: reduce_scatter(F.linear(h_full, w_down), tokens, ring),
        "down+scatter ring": lambda: linear_reduce_scatter(h_full, w_down, tokens, ring, 1),
        "down+scatter direct": lambda: linear_reduce_scatter_direct(h_full, w_down, tokens, ring),
        "qkv_gemm alone": lambda: F.linear(x_full, w_qkv, b_qkv),
        "down_gemm alone": lambda: F.linear(h_full, w_down),
    }
    return {f"{name} {case}": fn for case, fn in cases.items()}


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
                for case, run in cases.items():
                    barrier(ring, f"barrier before {case}")
                    start = time.perf_counter()
                    for _ in range(config["burst"]):
                        run()
                    if round_ >= config["warmup"]:
                        seconds[case].append((time.perf_counter() - start) / config["burst"])
        mine = torch.tensor([seconds[case] for case in cases], dtype=torch.float64)
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        if rank == 0:
            print(json.dumps({case: [t[i].tolist() for t in everyone] for i, case in enumerate(cases)}))
    finally:
        rendezvous.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
