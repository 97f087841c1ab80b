"""Errors the runtime raises. Each message names the cause (file, rank, device) and the fix.

`entry.run_rank` and the launcher catch `GalaxyRuntimeError` and print its message on one
line; anything else escaping is a bug.
"""
from __future__ import annotations

from typing import Sequence


class GalaxyRuntimeError(Exception):
    """Base class: a problem with the bundle, the network or a peer, not a bug."""


class BundleIntegrityError(GalaxyRuntimeError):
    """A bundle file is missing, altered or of the wrong format. `file` is its relative path."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"bundle file {file!r}: {problem}; re-copy the bundle from the machine "
                         "that compiled it, or recompile it with galaxy-compile")
        self.file = file


class RendezvousError(GalaxyRuntimeError):
    """The process group could not be formed (bad interface, mismatched world size, ...)."""


class RendezvousTimeout(RendezvousError):
    """Some ranks did not join in time. `missing_ranks` lists them (empty if unknown)."""

    def __init__(self, message: str, missing_ranks: Sequence[int] = ()):
        super().__init__(message)
        self.missing_ranks = tuple(missing_ranks)


class CollectiveError(GalaxyRuntimeError):
    """A transfer with `peer_rank` failed (the peer crashed or closed the connection)."""

    def __init__(self, message: str, peer_rank: int):
        super().__init__(message)
        self.peer_rank = peer_rank


class CollectiveTimeout(CollectiveError):
    """A transfer with `peer_rank` did not complete within the timeout."""


class TensorFileError(GalaxyRuntimeError):
    """A safetensors file (input, output or weights) cannot be read or written."""


class UsageError(GalaxyRuntimeError):
    """The command line or environment contradicts the bundle (e.g. RANK is another rank)."""
