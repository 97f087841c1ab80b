"""--inject specs (serve/faults.py): what they mean, and clear errors for what they cannot."""
from __future__ import annotations

import pytest

from galaxy.runtime.errors import UsageError
from galaxy.serve.faults import Fault, FaultInjector

DEVICES = ("desktop", "laptop", "tablet")


def test_specs_parse():
    assert Fault.parse("kill:1@3") == Fault("kill", "1", None, 3, "kill:1@3")
    assert Fault.parse("slow:tablet:4@2") == Fault("slow", "tablet", 4.0, 2, "slow:tablet:4@2")
    assert Fault.parse("linkdown:0@recovery").at is None
    assert Fault.parse("kill:1@3").device(DEVICES) == "laptop"
    assert Fault.parse("slow:tablet:2.5@1").device(DEVICES) == "tablet"


@pytest.mark.parametrize("spec, says", [
    ("kill:1", "not kill:RANK@REQ"), ("slow:1@3", "not kill:RANK@REQ"), ("kill:1:2@3", "not kill:RANK@REQ"),
    ("crash:1@3", "not kill:RANK@REQ"), ("slow:1:0.5@3", "must be > 1"), ("kill:1@0", "count from 1"),
    ("slow:1:1.2.3@2", "not kill:RANK@REQ")])
def test_bad_specs_say_what_is_expected(spec, says):
    with pytest.raises(UsageError, match=says):
        Fault.parse(spec)


@pytest.mark.parametrize("spec, says", [("kill:3@1", "ranks 0-2"), ("kill:phone@1", "no device 'phone'")])
def test_targets_must_be_in_the_plan(spec, says):
    with pytest.raises(UsageError, match=says):
        Fault.parse(spec).device(DEVICES)


class _Recorder:
    def __init__(self):
        self.done = []

    def kill(self, device):
        self.done.append(("kill", device))

    def slow(self, device, factor):
        self.done.append(("slow", device, factor))

    def link_down(self, device):
        self.done.append(("linkdown", device))

    def close(self):
        pass


def test_each_fault_fires_once_at_its_cue():
    actions = _Recorder()
    injector = FaultInjector([Fault.parse(s) for s in ("kill:1@2", "slow:tablet:4@2", "linkdown:0@recovery")],
                             actions, DEVICES)
    injector.request_started(1)
    assert actions.done == []
    injector.request_started(2)
    injector.request_started(2)  # a retried request does not start again, but a second cue fires nothing
    assert actions.done == [("kill", "laptop"), ("slow", "tablet", 4.0)]
    injector.transfer_started()
    assert actions.done[-1] == ("linkdown", "desktop")
    assert injector.fault_time("laptop") is not None and injector.fault_time("tablet") is None
    assert injector.fault_time("tablet", ("slow",)) is not None
