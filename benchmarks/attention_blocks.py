"""What attending to keys and values block by block costs against one fused SDPA, on this CPU.

    python -m benchmarks.attention_blocks [--models bert-base,bert-large,gpt2-medium]
                                          [--queries 256,128] [--blocks 1,2,3,4] [--repeat 15]

Sequence-parallel attention that hides its key/value exchange (runtime/online_attention.py)
attends a rank's queries to each rank's block of keys as it arrives and merges the blocks with an
online softmax, instead of one F.scaled_dot_product_attention over every key. For each model's
attention shape (heads, head dim; BERT with its padding mask, GPT-2 with a causal mask cut to the
queries' rows, both boolean as the generated code passes them) on 256 keys, it times SDPA and
`blockwise_attention` with the keys in b even blocks, for `queries` query rows (256: one device,
128: a rank's share), every case once per round, round-robin, on one torch thread. Factor = time
of b blocks / time of SDPA, median over rounds: what the cost model multiplies the attention
core's time by (cost/actions.py). Writes results.{json,md} to --out.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.output import finish, parser, start
from galaxy.runtime.online_attention import blockwise_attention
from galaxy.runtime.splits import split_sizes

REPO = Path(__file__).resolve().parents[1]
KEYS = 256
SHAPES = {"bert-base": (12, 64, False), "bert-large": (16, 64, False), "gpt2-medium": (16, 64, True)}  # heads, dim, causal


def inputs(model: str, queries: int) -> tuple[torch.Tensor, ...]:
    heads, dim, causal = SHAPES[model]
    gen = torch.Generator().manual_seed(queries)
    q = torch.randn(1, heads, queries, dim, generator=gen)
    k, v = (torch.randn(1, heads, KEYS, dim, generator=gen) for _ in range(2))
    if causal:  # this rank's rows of the causal mask: the last `queries` tokens
        mask = torch.ones(KEYS, KEYS, dtype=torch.bool).tril()[KEYS - queries:]
    else:  # BERT's padding mask, every token real
        mask = torch.ones(1, 1, queries, KEYS, dtype=torch.bool)
    return q, k, v, mask


def attend(q, k, v, mask, blocks: int) -> torch.Tensor:
    """SDPA (blocks = 0) or the online-softmax merge of `blocks` even key blocks."""
    scale = q.shape[-1] ** -0.5
    if blocks == 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return blockwise_attention(q, k, v, mask, scale, split_sizes(KEYS, [1] * blocks))


def measure(args) -> list[dict]:
    torch.set_num_threads(1)
    cases = [({"model": model, "queries": queries, "blocks": blocks}, inputs(model, queries))
             for model in args.models.split(",") for queries in (int(x) for x in args.queries.split(","))
             for blocks in [0, *(int(b) for b in args.blocks.split(","))]]
    seconds: list[list[float]] = [[] for _ in cases]
    with torch.inference_mode():
        for round_ in range(args.repeat + 1):
            for i, (case, tensors) in enumerate(cases):
                begin = time.perf_counter()
                attend(*tensors, case["blocks"])
                if round_:  # the first round warms caches and the allocator
                    seconds[i].append(time.perf_counter() - begin)
    rows = [{**case, "median_s": statistics.median(times), "min_s": min(times)} for (case, _), times in zip(cases, seconds)]
    fused = {(r["model"], r["queries"]): r["median_s"] for r in rows if r["blocks"] == 0}
    for r in rows:
        r["factor"] = r["median_s"] / fused[r["model"], r["queries"]]
    return rows


def table(rows: list[dict], repeat: int) -> str:
    counts = sorted({r["blocks"] for r in rows if r["blocks"]})
    lines = [f"Attention of `queries` rows to {KEYS} keys on 1 thread: SDPA in ms, and the time of the keys in b blocks "
             f"merged by the online softmax / SDPA (median of {repeat} rounds, every case round-robin in one process).",
             "", "| model | queries | SDPA ms | " + " | ".join(f"{b} block{'s' if b > 1 else ''}" for b in counts) + " |",
             "|---|---|---|" + "---|" * len(counts)]
    for model, queries in dict.fromkeys((r["model"], r["queries"]) for r in rows):
        by_blocks = {r["blocks"]: r for r in rows if (r["model"], r["queries"]) == (model, queries)}
        lines.append(f"| {model} | {queries} | {by_blocks[0]['median_s'] * 1e3:.2f} | "
                     + " | ".join(f"{by_blocks[b]['factor']:.2f}" for b in counts) + " |")
    means = [statistics.mean(r["factor"] for r in rows if r["blocks"] == b) for b in counts]
    lines += ["", "| mean over models and queries | " + " | ".join(f"{b} blocks: {m:.2f}" for b, m in zip(counts, means)) + " |",
              "|---|" + "---|" * len(counts)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start(args.out)
    rows = measure(args)
    return finish(args.out, rows, table(rows, args.repeat))


def _parse(argv):
    p = parser("benchmarks.attention_blocks", __doc__)
    p.add_argument("--models", default=",".join(SHAPES))
    p.add_argument("--queries", default="256,128", help="query rows (a rank's tokens)")
    p.add_argument("--blocks", default="1,2,3,4", help="key blocks merged by the online softmax")
    p.add_argument("--repeat", type=int, default=15, help="rounds (after one warmup round)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "attention-blocks")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
