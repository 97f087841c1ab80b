"""Compute rates of this device for the block kinds the cost model charges (cost/flops.py).

    GEMM         F.linear(x[rows, in], w[out, in]): 2 rows in out FLOPs; one rate per shape, and
                 the layer rate = sum of one layer's GEMM FLOPs / sum of their times (flops_per_s)
    attention    scaled_dot_product_attention of q, k, v [batch, heads, seq, head_dim] with an
                 all-true boolean mask (what BERT modules pass): 4 batch heads seq^2 head_dim FLOPs
                 (the two matrix products; softmax and scaling are in the time, not the count)
    elementwise  layer_norm and residual add over [tokens, hidden], GELU over [tokens, intermediate]:
                 bytes read + written / time
    GEMV         a decode step's one token through one layer's weights, cycling over enough copies
                 (GEMV_BYTES in all) that they stream from memory, not cache: weight bytes / time
    dispatch     one tiny op ([1, 64] x scalar): its fixed cost, which a decode step pays per op

Every figure is the median over `repeats` timed repeats (wall clock, perf_counter) after
`warmup` untimed calls; one repeat loops the op until it lasts at least `min_repeat_s`, so
short ops are not timer-bound.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

FLOAT_BYTES = 4  # the profile measures fp32, the dtype Galaxy compiles for
GEMV_BYTES = 256 << 20  # weights the GEMV pass cycles over: well beyond any CPU's last-level cache


@dataclass(frozen=True)
class Method:
    """How each figure is timed."""

    repeats: int
    warmup: int
    min_repeat_s: float

    def to_json(self) -> dict:
        return {"statistic": "median", "timer": "wall clock (time.perf_counter)", "repeats": self.repeats,
                "warmup": self.warmup, "min_repeat_s": self.min_repeat_s}


FULL = Method(repeats=11, warmup=3, min_repeat_s=0.02)
QUICK = Method(repeats=3, warmup=1, min_repeat_s=0.002)


@dataclass(frozen=True)
class Shapes:
    """The shapes of one Transformer layer to measure at; defaults are BERT-base at 256 tokens."""

    source: str = "BERT-base, 256 tokens (default)"
    batch: int = 1
    seq_len: int = 256
    hidden: int = 768
    heads: int = 12
    kv_heads: int = 12
    head_dim: int = 64
    intermediate: int = 3072
    gated_mlp: bool = False

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def gemms(self) -> tuple[Gemm, ...]:
        """One layer's GEMMs: QKV and output projections, MLP up (+ gate) and down."""
        qkv_out = (self.heads + 2 * self.kv_heads) * self.head_dim
        return (Gemm("qkv", self.tokens, self.hidden, qkv_out),
                Gemm("attention out", self.tokens, self.heads * self.head_dim, self.hidden),
                Gemm("mlp up" + (" + gate" if self.gated_mlp else ""), self.tokens, self.hidden,
                     self.intermediate, 2 if self.gated_mlp else 1),
                Gemm("mlp down", self.tokens, self.intermediate, self.hidden))

    @property
    def attention_key(self) -> str:
        return f"{self.batch}x{self.heads}x{self.seq_len}x{self.head_dim}"

    def to_json(self) -> dict:
        return {"source": self.source, "batch": self.batch, "seq_len": self.seq_len, "hidden": self.hidden,
                "heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "intermediate": self.intermediate, "gated_mlp": self.gated_mlp}


@dataclass(frozen=True)
class Gemm:
    name: str
    rows: int
    inner: int
    out: int
    count: int = 1  # how many of this GEMM one layer runs

    @property
    def key(self) -> str:
        """rows x in x out, the key of `gemm_flops_per_s` in the profile."""
        return f"{self.rows}x{self.inner}x{self.out}"

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.inner * self.out


@dataclass(frozen=True)
class Timing:
    median_s: float  # wall clock per call: what the rate uses
    min_s: float
    max_s: float
    inner: int  # op calls per timed repeat
    cpu_median_s: float  # process CPU time per call (all threads): shows contention, see busy_ratio


@dataclass(frozen=True)
class Measured:
    """One measured op: what it is, its work (FLOPs or bytes) and its timing."""

    kind: str  # "gemm" | "attention" | "elementwise"
    name: str
    key: str  # shape key
    work: float  # FLOPs (gemm, attention) or bytes (elementwise) per call
    timing: Timing
    count: int = 1  # per layer

    @property
    def rate(self) -> float:
        return self.work / self.timing.median_s


@dataclass(frozen=True)
class DeviceRates:
    shapes: Shapes
    method: Method
    threads: int
    gemms: tuple[Measured, ...]
    attention: Measured
    elementwise: tuple[Measured, ...]
    # GEMM speed by rows per GEMM relative to the whole sequence: ((rows, speed), ...), what token
    # tiles cost (cost/tiling.py)
    rows_speed: tuple[tuple[int, float], ...] = ()
    gemv: Measured | None = None
    dispatch: Measured | None = None

    @property
    def gemv_bytes_per_s(self) -> float | None:
        return self.gemv.rate if self.gemv else None

    @property
    def dispatch_s_per_op(self) -> float | None:
        return self.dispatch.timing.median_s if self.dispatch else None

    @property
    def flops_per_s(self) -> float:
        """One layer's GEMM FLOPs over their summed median times: the rate `Device.flops_per_s`."""
        return (sum(g.work * g.count for g in self.gemms)
                / sum(g.timing.median_s * g.count for g in self.gemms))

    @property
    def gemm_flops_per_s(self) -> dict[str, float]:
        return {g.key: g.rate for g in self.gemms}

    @property
    def attention_flops_per_s(self) -> float:
        return self.attention.rate

    @property
    def elementwise_bytes_per_s(self) -> float:
        return sum(e.work for e in self.elementwise) / sum(e.timing.median_s for e in self.elementwise)

    @property
    def busy_ratio(self) -> float | None:
        """With one thread: the layer GEMMs' wall time over their CPU time. Above BUSY_RATIO other
        processes took the core part of the time (the wall-clock rates are too low); None with
        more threads, where CPU time sums the threads."""
        if self.threads != 1:
            return None
        return (sum(g.timing.median_s * g.count for g in self.gemms)
                / sum(g.timing.cpu_median_s * g.count for g in self.gemms))


BUSY_RATIO = 1.1


def time_median(fn: Callable[[], object], method: Method) -> Timing:
    """Median seconds per call of `fn` (see the module docstring)."""
    for _ in range(max(1, method.warmup)):
        fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    inner = max(1, math.ceil(method.min_repeat_s / once))
    samples, cpu = [], []
    for _ in range(method.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        cpu.append((time.process_time() - start_cpu) / inner)
        samples.append((time.perf_counter() - start) / inner)
    return Timing(statistics.median(samples), min(samples), max(samples), inner, statistics.median(cpu))


def measure_gemm(gemm: Gemm, method: Method) -> Measured:
    x = torch.randn(gemm.rows, gemm.inner)
    w = torch.randn(gemm.out, gemm.inner)
    timing = time_median(lambda: F.linear(x, w), method)
    return Measured("gemm", gemm.name, gemm.key, gemm.flops, timing, gemm.count)


def measure_attention(shapes: Shapes, method: Method) -> Measured:
    q, k, v = (torch.randn(shapes.batch, shapes.heads, shapes.seq_len, shapes.head_dim) for _ in range(3))
    mask = torch.ones(shapes.batch, 1, shapes.seq_len, shapes.seq_len, dtype=torch.bool)
    timing = time_median(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), method)
    flops = 4.0 * shapes.batch * shapes.heads * shapes.seq_len ** 2 * shapes.head_dim
    return Measured("attention", "sdpa", shapes.attention_key, flops, timing)


def measure_elementwise(shapes: Shapes, method: Method) -> tuple[Measured, ...]:
    t, h, i = shapes.tokens, shapes.hidden, shapes.intermediate
    x, y = torch.randn(t, h), torch.randn(t, h)
    weight, bias = torch.ones(h), torch.zeros(h)
    up = torch.randn(t, i)
    ops = (("layer_norm", f"{t}x{h}", 2 * t * h, lambda: F.layer_norm(x, (h,), weight, bias)),
           ("add", f"{t}x{h}", 3 * t * h, lambda: torch.add(x, y)),
           ("gelu", f"{t}x{i}", 2 * t * i, lambda: F.gelu(up)))
    return tuple(Measured("elementwise", name, key, float(elements * FLOAT_BYTES), time_median(fn, method))
                 for name, key, elements, fn in ops)


def measure_gemv(shapes: Shapes, method: Method) -> Measured:
    """One token through copies of one layer's weights, GEMV_BYTES of them in all (weight bytes / time)."""
    layer = [torch.randn(g.out * g.count, g.inner) for g in shapes.gemms()]
    layer_bytes = sum(w.numel() for w in layer) * FLOAT_BYTES
    copies = max(1, math.ceil(GEMV_BYTES / layer_bytes))
    weights = [w.clone() for _ in range(copies) for w in layer]
    inputs = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}

    def one_pass() -> None:
        for w in weights:
            F.linear(inputs[w.shape[1]], w)
    timing = time_median(one_pass, Method(max(3, method.repeats // 2), 1, 0.0))
    return Measured("gemv", f"{copies} copies of a layer", f"1 token, {copies * layer_bytes >> 20} MiB",
                    float(copies * layer_bytes), timing)


def measure_dispatch(method: Method) -> Measured:
    x = torch.randn(1, 64)
    return Measured("dispatch", "x * 2.0", "1x64", 1.0, time_median(lambda: x * 2.0, method))


def measure_device(shapes: Shapes, method: Method, threads: int | None = None) -> DeviceRates:
    """Measure every compute rate of the profile with `threads` intra-op threads (None: torch's)."""
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    log.info("measuring with %d thread(s), median of %d repeats after %d warmup calls", threads,
             method.repeats, method.warmup)
    with torch.inference_mode():
        gemms = []
        for gemm in _unique(shapes.gemms()):
            gemms.append(measure_gemm(gemm, method))
            log.info("GEMM %-22s %8.1f GFLOP/s", f"{gemm.name} {gemm.key}", gemms[-1].rate / 1e9)
        attention = measure_attention(shapes, method)
        log.info("attention %s %8.1f GFLOP/s", shapes.attention_key, attention.rate / 1e9)
        elementwise = measure_elementwise(shapes, method)
        log.info("elementwise %8.2f GB/s", sum(e.work for e in elementwise)
                 / sum(e.timing.median_s for e in elementwise) / 1e9)
        rows_speed = measure_rows_speed(shapes, method, gemms)
        log.info("GEMM speed by rows: %s", ", ".join(f"{r}: {s:.2f}" for r, s in rows_speed))
        gemv, dispatch = measure_gemv(shapes, method), measure_dispatch(method)
        log.info("GEMV %8.2f GB/s, dispatch %.1f us per op", gemv.rate / 1e9, dispatch.timing.median_s * 1e6)
    rates = DeviceRates(shapes, method, threads, tuple(gemms), attention, elementwise, rows_speed, gemv, dispatch)
    if rates.busy_ratio is not None and rates.busy_ratio > BUSY_RATIO:
        log.warning("the machine was busy: GEMM wall time was %.2fx its CPU time, so the rates are about "
                    "%.0f%% low; profile an idle device for figures to plan with", rates.busy_ratio,
                    100 * (1 - 1 / rates.busy_ratio))
    return rates


TILE_ROWS = (16, 32, 64, 128)  # rows per GEMM piece that token tiles make, below the sequence


def measure_rows_speed(shapes: Shapes, method: Method, whole: list[Measured]) -> tuple[tuple[int, float], ...]:
    """The layer's GEMMs on fewer rows: their FLOP rate (summed over the layer) relative to the rate
    on the whole sequence (`whole`, measured already)."""
    whole_rate = sum(g.work * g.count for g in whole) / sum(g.timing.median_s * g.count for g in whole)
    points = []
    for rows in (r for r in TILE_ROWS if r < shapes.tokens):
        measured = [(measure_gemm(Gemm(g.name, rows, g.inner, g.out, g.count), method), g.count)
                    for g in _unique(shapes.gemms())]
        rate = sum(m.work * c for m, c in measured) / sum(m.timing.median_s * c for m, c in measured)
        points.append((rows, round(rate / whole_rate, 4)))
    return (*points, (shapes.tokens, 1.0))


def _unique(gemms: tuple[Gemm, ...]) -> list[Gemm]:
    """GEMMs of one shape measured once, their per-layer counts added (names joined)."""
    by_key: dict[str, Gemm] = {}
    for g in gemms:
        if g.key in by_key:
            seen = by_key[g.key]
            g = Gemm(f"{seen.name}, {g.name}", g.rows, g.inner, g.out, seen.count + g.count)
        by_key[g.key] = g
    return list(by_key.values())


def shapes_from_model(model: str, size: str | None = None, seq_len: int | None = None) -> Shapes:
    """The layer shapes of MODEL (a model.py, HF config or checkpoint), via the compiler's front end."""
    from galaxy.compiler.capture.load import load_model
    from galaxy.compiler.capture.trace import capture
    from galaxy.compiler.passes.recognise import recognise
    from galaxy.compiler.passes.summarise import summarise

    loaded = load_model(model, size, seq_len, materialize=False)
    captured = capture(loaded)
    return shapes_from_summary(summarise(recognise(captured), captured))


def shapes_from_summary(summary) -> Shapes:
    """The layer shapes of a ModelSummary."""
    return Shapes(source=f"{summary.name}, {summary.seq_len} tokens", batch=summary.batch,
                  seq_len=summary.seq_len, hidden=summary.hidden, heads=summary.heads,
                  kv_heads=summary.kv_heads, head_dim=summary.head_dim, intermediate=summary.intermediate,
                  gated_mlp=summary.gated_mlp)
