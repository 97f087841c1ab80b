"""The stream schedule without a network: rank 0 keeps `lag` requests started ahead of the head."""
from __future__ import annotations

import torch

from galaxy.runtime.stream import pack_requests, pipelined, unpack_requests


def _recording(events: list[str]):
    def start(inputs, weights, ctx):
        events.append(f"S{inputs}")
        return inputs

    def finish(held, weights, ctx):
        events.append(f"F{held}")
        return held * 10
    return start, finish


def test_pipelined_runs_start_lag_requests_ahead_and_yields_in_order():
    events: list[str] = []
    outputs = list(pipelined(iter(range(4)), *_recording(events), {}, None, lag=2))
    assert outputs == [0, 10, 20, 30]
    assert events == ["S0", "S1", "S2", "F0", "S3", "F1", "F2", "F3"]


def test_lag_zero_is_one_request_at_a_time():
    events: list[str] = []
    list(pipelined(range(2), *_recording(events), {}, None, lag=0))
    assert events == ["S0", "F0", "S1", "F1"]


def test_requests_pack_into_one_broadcast_and_back():
    files = [{"input_ids": torch.arange(3), "attention_mask": torch.ones(3)}, {"input_ids": torch.arange(3) + 1,
                                                                             "attention_mask": torch.zeros(3)}]
    back, count = unpack_requests(pack_requests(files, 5))
    assert count == 5 and len(back) == 2 and all(torch.equal(back[i][k], files[i][k]) for i in range(2) for k in files[i])
