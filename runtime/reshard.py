"""Build this rank's weight shard for a new plan from the one it holds, its peers' and the host's.

When galaxy-serve re-plans (a device lost, or one slower than planned), most of what each device
needs under the new plan is already on it or on a surviving peer: the same rows of the same
projections, cut differently. The coordinator works out a *recipe* per device (serve/reshard.py)
and sends it with the `join` word; the rank then runs `rebuild` once the new gloo group stands:

    recipe = {"holds": {"plan": SHA, "rank": R},             the shard the recipe starts from
              "tensors": {NAME: {"shape", "dtype", "dim", "sha256", "parts": [PART, ...]}},
              "sends": [[PEER, TAG, NAME, DIM, START, STOP], ...]}
    PART   = ["self", NAME, START, STOP]      rows (dim 0) or columns (dim 1) of a held tensor
           | ["peer", PEER, TAG, START, STOP] the same, from rank PEER's held shard, over gloo
           | ["host", KEY]                    a piece the coordinator sent with the join word

A new tensor is its parts concatenated along `dim`. Every tensor that is not a held one reused
whole is checked against the sha256 of what galaxy-compile would have written for it (the
coordinator lowered the new plan from its copy of the model), so a wrong cut, a wrong piece or
a corrupted transfer is refused by name, never served. `sends` are the pieces of this rank's
held shard that peers need; all receives are posted before any send waits (gloo sends complete
only once received), every wait with the group's timeout.
"""
from __future__ import annotations

import ctypes
import hashlib
import time
from typing import Mapping

import torch

from .errors import BundleIntegrityError
from .p2p import Transfer, irecv, isend
from .ring import Ring

SELF, PEER, HOST = "self", "peer", "host"


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (read in place, not copied)."""
    tensor = tensor.detach().contiguous()
    digest = hashlib.sha256(f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}".encode())
    size = tensor.numel() * tensor.element_size()
    if size:
        digest.update(memoryview((ctypes.c_char * size).from_address(tensor.data_ptr())).cast("B"))
    return digest.hexdigest()


def units(tensor: torch.Tensor) -> torch.Tensor:
    """What recipes cut along their dim: the tensor, a scalar as one element."""
    return tensor.reshape(1) if tensor.dim() == 0 else tensor


def rebuild(recipe: Mapping, held: Mapping[str, torch.Tensor], host_pieces: Mapping[str, torch.Tensor],
            world: Ring) -> tuple[dict[str, torch.Tensor], dict]:
    """This rank's new shard, and what it took: {"kept", "peer", "host", "sent"} bytes and the
    seconds spent exchanging, assembling and checking."""
    started = time.perf_counter()
    receives = _post_receives(recipe["tensors"], world)
    sends = [isend(units(held[name]).narrow(dim, start, stop - start).contiguous(), peer, world, tag,
                   f"sending weights {name}[{start}:{stop}] for the new plan")
             for peer, tag, name, dim, start, stop in recipe["sends"]]
    received = {key: transfer.wait() for key, transfer in receives.items()}
    for transfer in sends:
        transfer.wait()
    exchanged = time.perf_counter()
    weights, stats = {}, {"kept": 0, "peer": 0, "host": 0, "sent": sum(t.tensor.numel() * t.tensor.element_size()
                                                                       for t in sends)}
    checks = []
    for name, spec in recipe["tensors"].items():
        weights[name], reused = _assemble(name, spec, held, received, host_pieces, stats)
        if not reused:
            checks.append(name)
    assembled = time.perf_counter()
    for name in checks:
        if tensor_sha256(weights[name]) != recipe["tensors"][name]["sha256"]:
            raise BundleIntegrityError(f"weights {name}", "rebuilt for the new plan does not match the sha256 "
                                                          "the coordinator expects (a wrong or damaged piece)")
    stats.update(exchange_s=exchanged - started, assemble_s=assembled - exchanged,
                 check_s=time.perf_counter() - assembled, checked=len(checks))
    return weights, stats


def _post_receives(tensors: Mapping, world: Ring) -> dict[tuple[int, int], Transfer]:
    receives = {}
    for name, spec in tensors.items():
        for part in spec["parts"]:
            if part[0] == PEER:
                _, peer, tag, start, stop = part
                shape = list(spec["shape"]) or [1]
                shape[spec["dim"]] = stop - start
                buffer = torch.empty(shape, dtype=getattr(torch, spec["dtype"]))
                receives[peer, tag] = irecv(buffer, peer, world, tag, f"receiving weights of {name} for the new plan")
    return receives


def _assemble(name: str, spec: Mapping, held: Mapping[str, torch.Tensor], received: Mapping,
              host_pieces: Mapping[str, torch.Tensor], stats: dict) -> tuple[torch.Tensor, bool]:
    """(the tensor, whether it is a held tensor reused whole: nothing to check)."""
    dim, parts = spec["dim"], spec["parts"]
    whole = _held_whole(parts, held, spec)
    if whole is not None:
        stats["kept"] += whole.numel() * whole.element_size()
        return whole, True
    pieces = []
    for part in parts:
        if part[0] == SELF:
            _, source, start, stop = part
            if source not in held:
                raise BundleIntegrityError(f"weights {name}", f"needs {source}, which this rank does not hold")
            piece, kind = units(held[source]).narrow(dim, start, stop - start), "kept"
        elif part[0] == PEER:
            piece, kind = received[part[1], part[2]], "peer"
        elif part[0] == HOST:
            piece, kind = host_pieces[part[1]], "host"
        else:
            raise BundleIntegrityError(f"weights {name}", f"has a part of unknown kind {part[0]!r}")
        stats[kind] += piece.numel() * piece.element_size()
        pieces.append(piece)
    if not pieces:  # a share of nothing (a rank with no heads or columns)
        return torch.empty(spec["shape"], dtype=getattr(torch, spec["dtype"])), False
    # a copy in every case: a view would keep the whole old tensor alive
    tensor = torch.cat(pieces, dim) if len(pieces) > 1 else pieces[0].clone(memory_format=torch.contiguous_format)
    if not spec["shape"] and tensor.shape == (1,):
        tensor = tensor.reshape(())
    if list(tensor.shape) != list(spec["shape"]):
        raise BundleIntegrityError(f"weights {name}", f"rebuilt with shape {list(tensor.shape)}, "
                                                      f"expected {spec['shape']}")
    return tensor, False


def _held_whole(parts, held: Mapping[str, torch.Tensor], spec: Mapping) -> torch.Tensor | None:
    """The held tensor a one-part recipe takes whole, if that is what it does."""
    if len(parts) != 1 or parts[0][0] != SELF:
        return None
    _, source, start, stop = parts[0]
    tensor = held.get(source)
    if tensor is None or list(tensor.shape) != list(spec["shape"]) or (start, stop) != (0, units(tensor).shape[spec["dim"]]) \
            or tensor.dtype != getattr(torch, spec["dtype"]):
        return None
    return tensor
