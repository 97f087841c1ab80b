"""A tiny hand-made bundle for testing entry.py and launcher.py end to end.

Three ranks ("alpha", "beta", "gamma"); tokens split [3, 0, 2] (beta holds none), MLP
columns split [3, 2, 1]. The forward runs the same MLP twice: once with plain all_gather /
reduce_scatter, once with the tiled all_gather_linear / linear_reduce_scatter, then gathers
the tokens on rank 0. The reference is the single-process mlp(mlp(x)).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from galaxy.runtime import bundle

DEVICES = ["alpha", "beta", "gamma"]
TOKENS_PER_RANK = [3, 0, 2]
COLUMNS_PER_RANK = [3, 2, 1]
HIDDEN = 4
RUNTIME_SOURCE = Path(bundle.__file__).resolve().parent

RANK_MODULE = '''"""rank_{rank}.py: hand-made test bundle, device {device!r} (rank {rank} of {world})."""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F

from galaxy_runtime.collectives import all_gather, gather_hidden, reduce_scatter
from galaxy_runtime.entry import run_rank
from galaxy_runtime.overlap import all_gather_linear, linear_reduce_scatter

RANK = {rank}
TOKENS_PER_RANK = {tokens}
TILES = 2


def forward(inputs, weights, ctx):
    if os.environ.get("GALAXY_TEST_FAIL_RANK") == str(RANK):
        raise RuntimeError("injected failure for the launcher test")
    ring = ctx.ring(0)
    start = sum(TOKENS_PER_RANK[:ring.index])
    x_local = inputs["x"][:, start:start + TOKENS_PER_RANK[ring.index]]
    x_full = all_gather(x_local, TOKENS_PER_RANK, ring)
    hidden = torch.relu(F.linear(x_full, weights["w1"], weights["b1"]))
    y_local = reduce_scatter(F.linear(hidden, weights["w2"]), TOKENS_PER_RANK, ring) + weights["b2"]
    hidden = torch.relu(all_gather_linear(y_local, weights["w1"], weights["b1"], TOKENS_PER_RANK,
                                          ring, tiles=TILES))
    z_local = linear_reduce_scatter(hidden, weights["w2"], TOKENS_PER_RANK, ring, tiles=TILES)
    (y,) = gather_hidden([z_local + weights["b2"]], TOKENS_PER_RANK, ring)
    return {{"y": y}} if y is not None else None


if __name__ == "__main__":
    sys.exit(run_rank(RANK, forward))
'''


def reference_mlp(x, w1, b1, w2, b2):
    return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)


def make_tiny_bundle(root: Path) -> Path:
    """Write the bundle under root/tiny_bundle and return its path."""
    out = root / "tiny_bundle"
    gen = torch.Generator().manual_seed(0)
    columns = sum(COLUMNS_PER_RANK)
    w1, b1 = torch.randn(columns, HIDDEN, generator=gen), torch.randn(columns, generator=gen)
    w2, b2 = torch.randn(HIDDEN, columns, generator=gen), torch.randn(HIDDEN, generator=gen)
    x = torch.randn(2, sum(TOKENS_PER_RANK), HIDDEN, generator=gen)
    files = []
    for rank, device in enumerate(DEVICES):
        lo = sum(COLUMNS_PER_RANK[:rank])
        cols = slice(lo, lo + COLUMNS_PER_RANK[rank])
        bundle.save_tensors(out / bundle.rank_weights(rank),
                            {"w1": w1[cols], "b1": b1[cols], "w2": w2[:, cols], "b2": b2})
        (out / bundle.rank_module(rank)).write_text(RANK_MODULE.format(
            rank=rank, device=device, world=len(DEVICES), tokens=TOKENS_PER_RANK))
        files += [bundle.rank_module(rank), bundle.rank_weights(rank)]
    bundle.save_tensors(out / bundle.EXAMPLE_INPUTS, {"x": x})
    bundle.save_tensors(out / bundle.REFERENCE_OUTPUTS,
                        {"y": reference_mlp(reference_mlp(x, w1, b1, w2, b2), w1, b1, w2, b2)})
    plan = {"format_version": 1, "input_names": ["x"], "output_names": ["y"], "source": "hand-made",
            "plan": {"devices": DEVICES, "wire_dtype": "float32", "format_version": 1,
                     "stages": [{"ranks": [0, 1, 2], "tokens_per_rank": TOKENS_PER_RANK,
                                 "columns_per_rank": COLUMNS_PER_RANK, "tiles": 2}]}}
    (out / bundle.PLAN).write_text(json.dumps(plan, indent=2))
    shutil.copytree(RUNTIME_SOURCE, out / bundle.RUNTIME_DIR,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    runtime = [p.relative_to(out).as_posix() for p in sorted((out / bundle.RUNTIME_DIR).rglob("*.py"))]
    bundle.write_manifest(out, files + runtime + [bundle.PLAN, bundle.EXAMPLE_INPUTS,
                                                  bundle.REFERENCE_OUTPUTS])
    return out
