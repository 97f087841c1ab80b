"""Whether this machine can emulate a cluster (root, ip/tc, netns, a cpu cgroup): tests that build
namespaces are marked `needs_emulation` and skip with the reason otherwise."""
from __future__ import annotations

import os

import pytest

from galaxy.host.emulate import EmulatedCluster, EmulationUnavailable


def _why_no_emulation() -> str | None:
    try:
        with EmulatedCluster([None]):
            return None
    except EmulationUnavailable as exc:
        return str(exc)


NO_EMULATION = "not root" if os.geteuid() != 0 else _why_no_emulation()
needs_emulation = pytest.mark.skipif(NO_EMULATION is not None, reason=f"cannot emulate here: {NO_EMULATION}")
