"""GALAXY_PROFILE's per-run line: time in each collective, and apart from it the waits on peers."""
from galaxy.runtime import timing


def test_waits_are_reported_apart_and_not_added_to_the_collectives():
    timing.take()
    timing.record_wait(0.004)
    timing.record_wait(0.001)
    totals = timing.take()
    totals["all_gather"] = (0.010, 2)
    line = timing.describe(totals, 0.050)
    assert line == ("50.0 ms, of which 10.0 ms in collectives (all_gather 2x 10.0 ms); "
                    "5.0 ms of it waiting on peers (2 waits)")
    assert timing.take() == {}  # take() resets
    assert "waiting" not in timing.describe({"all_gather": (0.01, 1)}, 0.02)
