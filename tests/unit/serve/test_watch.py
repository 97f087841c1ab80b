"""The straggler watch (serve/watch.py) on reports shaped like the ranks' `times`."""
from __future__ import annotations

import pytest

from galaxy.serve.watch import Watch, WatchSettings, measured_busy_s, predicted_busy_s


def _document(busy_s: dict[str, float], layers: int = 2) -> dict:
    """plan.json with one stage over the devices and their predicted compute per request."""
    devices = list(busy_s)
    per_rank = [busy_s[d] / (2 * layers) for d in devices]
    stage = {"ranks": list(range(len(devices))), "first_layer": 0, "end_layer": layers}
    return {"plan": {"devices": devices, "stages": [stage], "predicted_blocks": [
        {"stage": 0, "block": "attention", "per_layer": True, "compute_s_per_rank": per_rank},
        {"stage": 0, "block": "mlp", "per_layer": True, "compute_s_per_rank": per_rank},
        {"stage": 0, "block": "handoff", "per_layer": False, "compute_s_per_rank": [1.0] * len(devices)}]}}


def _times(busy_s: float, waited_s: float = 0.0) -> dict:
    return {"blocks": {"attention": busy_s / 2 + waited_s, "mlp": busy_s / 2}, "block_waits": {"attention": waited_s}}


def _feed(watch: Watch, request: int, busy: dict[str, float], waits: dict[str, float] | None = None):
    verdicts = [watch.observe(d, request, _times(b, (waits or {}).get(d, 0.0))) for d, b in busy.items()]
    return [v for v in verdicts if v is not None]


def test_predicted_and_measured_busy_time():
    document = _document({"a": 0.02, "b": 0.01})
    assert predicted_busy_s(document) == pytest.approx({"a": 0.02, "b": 0.01})  # handoff is not a block
    assert measured_busy_s(_times(0.03, waited_s=0.05)) == pytest.approx(0.03)


def test_a_device_four_times_slower_is_reported_after_the_set_number_of_requests():
    watch = Watch(WatchSettings(margin=0.5, requests=3, smoothing=3))
    watch.reset(_document({"a": 0.01, "b": 0.01, "c": 0.01}))
    request = 0
    for request in range(1, 6):  # every device 1.3x slower than predicted: the cost model's error
        assert not _feed(watch, request, {"a": 0.013, "b": 0.013, "c": 0.013})
    verdicts = []
    for request in range(request + 1, request + 4):  # c slows down, and its peers wait for it
        assert not verdicts
        verdicts = _feed(watch, request, {"a": 0.013, "b": 0.013, "c": 0.052}, {"a": 0.04, "b": 0.04})
    (verdict,) = verdicts
    assert set(verdict.slowdown) == {"c"} and verdict.slowdown["c"] == pytest.approx(4.0)
    assert "c: busy 52.0 ms vs 10.0 ms predicted" in verdict.detail


def test_a_machine_busier_as_a_whole_is_no_straggler():
    watch = Watch(WatchSettings(requests=2, smoothing=2))
    watch.reset(_document({"a": 0.01, "b": 0.01, "c": 0.01}))
    for request in range(1, 10):
        assert not _feed(watch, request, {d: 0.01 * (1 + request) for d in "abc"})


def test_a_device_faster_than_planned_is_reported_too():
    watch = Watch(WatchSettings(requests=2, smoothing=2))
    watch.reset(_document({"a": 0.01, "b": 0.04, "c": 0.01}))  # b was planned at a quarter of the speed
    verdicts = []
    for request in range(1, 4):
        verdicts += _feed(watch, request, {"a": 0.01, "b": 0.01, "c": 0.01})
    assert verdicts and verdicts[0].slowdown["b"] == pytest.approx(0.25)


def test_short_predictions_and_partial_requests_are_not_judged():
    watch = Watch(WatchSettings(requests=1, smoothing=1, min_predicted_s=0.005))
    watch.reset(_document({"a": 0.001, "b": 0.001, "c": 0.02}))
    assert not _feed(watch, 1, {"a": 0.05, "b": 0.001, "c": 0.02})  # a and b are under min_predicted_s
    watch.reset(_document({"a": 0.01, "b": 0.01, "c": 0.01}))
    assert watch.observe("a", 7, _times(0.5)) is None  # the others have not reported request 7 yet
    assert watch.observe("stranger", 7, _times(0.5)) is None


def test_the_undisturbed_device_of_three_is_not_called_faster():
    """b and c slower than planned: the median is b, and a, on plan, is not faster than planned."""
    watch = Watch(WatchSettings(requests=2, smoothing=2))
    watch.reset(_document({"a": 0.01, "b": 0.01, "c": 0.01}))
    verdicts = []
    for request in range(1, 8):
        verdicts += _feed(watch, request, {"a": 0.01, "b": 0.018, "c": 0.04})
    assert verdicts and all(set(v.slowdown) == {"c"} for v in verdicts)


def _with_rates(document: dict, gflops: dict[str, float]) -> dict:
    return {**document, "cluster": {"devices": [{"name": d, "flops_per_s": g * 1e9} for d, g in gflops.items()]}}


def test_a_device_re_planned_as_slower_that_recovers_is_reported_on_a_slow_machine():
    """The model's absolute error (here every device 1.4x slower than predicted) does not hide it."""
    first = _with_rates(_document({"a": 0.01, "b": 0.01, "c": 0.01}), {"a": 40, "b": 40, "c": 40})
    replanned = _with_rates(_document({"a": 0.01, "b": 0.01, "c": 0.016}), {"a": 40, "b": 40, "c": 25})
    watch = Watch(WatchSettings(requests=2, smoothing=2))
    watch.reset(replanned, first)
    assert watch.assumed_slower == {"c"}
    verdicts = []
    for request in range(1, 5):  # c is back to full speed: 14 ms busy where the plan expects 16 x 1.4
        verdicts += _feed(watch, request, {"a": 0.014, "b": 0.014, "c": 0.014})
    assert verdicts and set(verdicts[0].slowdown) == {"c"} and verdicts[0].slowdown["c"] == pytest.approx(0.625)
    watch.reset(replanned)  # without knowing the first plan, c's ratio (0.875) is not below 1 / 1.5
    assert not [v for request in range(1, 5) for v in _feed(watch, request, {"a": 0.014, "b": 0.014, "c": 0.014})]
