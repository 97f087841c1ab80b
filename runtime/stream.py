"""Many requests through a bundle, the pipeline stages working on different requests at once.

A generated rank module of a plan with several stages splits rank 0's work in two: `start`
(prologue and stage 0 of a request, handing its hidden states on) and `finish` (receive the
head's inputs back from the last stage, run the head). Rank 0 streams with `pipelined`:

    for each request i:  start(i);  then finish(i - lag) once lag requests are ahead of it

with lag = stages - 1, so while rank 0 runs stage 0 of request i, stage s works on request
i - s, and the head inputs of request i - lag come back, in order, just as rank 0 is done.
Every other rank (and every rank of a one-stage plan) runs `forward` once per request, in
order; the hand-off sends are asynchronous (runtime/stages.py), so no stage waits for a later
one to take a request before it starts on the next.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

Stream = Callable[[Iterable[dict], dict, object], Iterator]


def pipelined(requests: Iterable[dict], start: Callable, finish: Callable, weights: dict, ctx,
              lag: int) -> Iterator:
    """Yield each request's outputs in order; `start` runs up to `lag` requests ahead of `finish`."""
    started: collections.deque = collections.deque()
    for inputs in requests:
        started.append(start(inputs, weights, ctx))
        if len(started) > lag:
            yield finish(started.popleft(), weights, ctx)
    while started:
        yield finish(started.popleft(), weights, ctx)


def sequential(forward: Callable) -> Stream:
    """The stream of a rank that runs whole requests one after another."""
    def stream(requests: Iterable[dict], weights: dict, ctx) -> Iterator:
        return (forward(inputs, weights, ctx) for inputs in requests)
    return stream


@dataclass
class StreamRun:
    outputs: list  # per request: its outputs on rank 0, None elsewhere
    latencies_s: list[float]  # per request: from taking it on to its outputs
    wall_s: float  # the whole stream

    @property
    def requests_per_s(self) -> float:
        return len(self.outputs) / self.wall_s if self.wall_s > 0 else float("inf")


def timed_stream(stream: Stream, requests: list[dict], weights: dict, ctx) -> StreamRun:
    """Run the stream under inference mode; time each request and the whole, then flush the sends."""
    taken: list[float] = []

    def feed() -> Iterator[dict]:
        for inputs in requests:
            taken.append(time.perf_counter())
            yield inputs

    outputs, latencies = [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for i, result in enumerate(stream(feed(), weights, ctx)):
            latencies.append(time.perf_counter() - taken[i])
            outputs.append(result)
    ctx.handoff.flush()
    return StreamRun(outputs, latencies, time.perf_counter() - start)


_COUNT = "requests"  # rank 0 decides how many requests run; every rank must run as many


def pack_requests(files: Sequence[Mapping[str, torch.Tensor]], count: int) -> dict[str, torch.Tensor]:
    """Several input files (`k/name`) and the number of requests to run, to broadcast in one go."""
    packed = {f"{k}/{name}": tensor for k, inputs in enumerate(files) for name, tensor in inputs.items()}
    packed[_COUNT] = torch.tensor([count])
    return packed


def unpack_requests(packed: Mapping[str, torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]], int]:
    """The input files `pack_requests` packed, in order, and the number of requests."""
    files: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in packed.items():
        if key == _COUNT:
            continue
        k, name = key.split("/", 1)
        files.setdefault(int(k), {})[name] = tensor
    return [files[k] for k in sorted(files)], int(packed[_COUNT])
