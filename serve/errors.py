"""What a request or a plan change can fail with; serve/http.py maps each to an HTTP status."""
from __future__ import annotations

from galaxy.runtime.errors import GalaxyRuntimeError


class ServiceUnavailable(GalaxyRuntimeError):
    """The cluster cannot serve now (forming, lost a rank, stopping); the message says why."""


class RequestTimeout(GalaxyRuntimeError):
    """A request got no answer within the request timeout."""


class RequestFailed(GalaxyRuntimeError):
    """A request failed on a rank (the message names it); the cluster serves on."""
