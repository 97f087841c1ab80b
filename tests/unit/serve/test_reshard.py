"""Weight moves between plans (serve/reshard.py) against a slow, obviously correct twin.

For pairs of plans of tiny models (HMP, GQA, pipelines, sequence parallelism only, Megatron-style),
the shards the new plan needs are lowered twice: by `plan_moves`' recipes, each part taken from
where it says (the device's own old shard, a peer's, or the coordinator's pieces), and directly
by lowering. They must be equal tensor for tensor, every byte must be counted once, and a plan
that only drops a device from sequence parallelism must move nothing.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from galaxy.compiler.lower.shard import lower
from galaxy.runtime.errors import BundleIntegrityError
from galaxy.runtime.reshard import HOST, PEER, SELF, rebuild, tensor_sha256
from galaxy.runtime.ring import Ring
from galaxy.serve.reshard import HoldingsIndex, plan_moves
from helpers import captured_tiny, manual_plan, pipeline_plan


@pytest.fixture(scope="module")
def models():
    return {kind: captured_tiny(kind) for kind in ("bert", "llama")}


def _plan(summary, spec, devices):
    kind, *weights = spec
    if kind == "hybrid":
        plan = manual_plan(summary, weights, weights, weights)
    elif kind == "sequence":
        plan = manual_plan(summary, None, None, weights)
    elif kind == "tensor":
        plan = manual_plan(summary, weights, weights, weights, shape="tensor")
    else:
        plan = pipeline_plan(summary, [(1, [w]) for w in weights])
    return dataclasses.replace(plan, devices=tuple(devices))


def _shards(model, plan):
    captured, graph, _ = model
    return {r.program.rank: r.weights for r in lower(graph, captured, plan, "test")}


CASES = [  # model, old plan on its devices, new plan on its devices
    ("bert", ("hybrid", 1, 1, 1), "abc", ("hybrid", 1, 1), "ac"),  # c keeps its heads, b's come from the coordinator
    ("bert", ("hybrid", 1, 1, 1), "abc", ("hybrid", 1, 1), "bc"),  # rank 0 lost: embeddings and head move
    ("bert", ("hybrid", 1, 1, 1), "abc", ("hybrid", 3, 1, 1), "abc"),  # a straggler: peers exchange
    ("bert", ("hybrid", 1, 1, 1), "abc", ("hybrid", 2, 1, 0), "abc"),  # c keeps a share of nothing
    ("bert", ("sequence", 1, 1, 1), "abc", ("sequence", 1, 1), "ab"),  # nothing moves
    ("bert", ("pipeline", 1, 1), "ab", ("hybrid", 1, 1), "ab"),
    ("llama", ("hybrid", 1, 1, 1), "abc", ("hybrid", 1, 1), "ac"),  # GQA: whole KV groups
    ("llama", ("tensor", 1, 1, 1), "abc", ("hybrid", 1, 2), "cb"),
]


def _twin(moves, new_devices, holdings, device, spec):
    """The tensor a recipe describes, each part read from where it says."""
    pieces = []
    for part in spec["parts"]:
        if part[0] == SELF:
            pieces.append(holdings[device][part[1]].narrow(spec["dim"], part[2], part[3] - part[2]))
        elif part[0] == HOST:
            pieces.append(moves.host_pieces[device][part[1]])
        else:
            assert part[0] == PEER
            source = new_devices[part[1]]
            (send,) = [s for s in moves.recipes[source]["sends"] if s[:2] == [new_devices.index(device), part[2]]]
            assert send[3] == spec["dim"] and send[4:] == part[3:]
            pieces.append(holdings[source][send[2]].narrow(send[3], send[4], send[5] - send[4]))
    return torch.cat(pieces, spec["dim"]) if pieces else torch.empty(spec["shape"])


@pytest.mark.parametrize("kind, old_spec, old_devices, new_spec, new_devices", CASES)
def test_recipes_rebuild_what_lowering_gives(models, kind, old_spec, old_devices, new_spec, new_devices):
    summary = models[kind][2]
    old, new = _plan(summary, old_spec, old_devices), _plan(summary, new_spec, new_devices)
    holdings = {old.devices[r]: shard for r, shard in _shards(models[kind], old).items()}
    expected = _shards(models[kind], new)
    moves = plan_moves(expected, new.devices, holdings, {})
    for rank, shard in expected.items():
        device = new.devices[rank]
        recipe = moves.recipes[device]["tensors"]
        assert set(recipe) == set(shard)
        for name, tensor in shard.items():
            assert torch.equal(_twin(moves, list(new.devices), holdings, device, recipe[name]), tensor), name
            assert recipe[name]["sha256"] in (None, tensor_sha256(tensor))
        counted = moves.by_device[device]
        assert counted.kept + counted.peer + counted.host == counted.full == sum(
            t.numel() * t.element_size() for t in shard.values())
    lost = set(old.devices) - set(new.devices)
    sources = {p[1] for r in moves.recipes.values() for spec in r["tensors"].values() for p in spec["parts"]
               if p[0] == PEER}
    assert all(new.devices[s] not in lost for s in sources)
    if old_spec[0] == "sequence" and new.devices[0] == old.devices[0]:
        assert moves.total.moved == 0 and not any(moves.host_pieces.values())


def test_a_prebuilt_index_over_every_holder_gives_the_same_moves(models):
    summary = models["bert"][2]
    old, new = _plan(summary, ("hybrid", 1, 1, 1), "abc"), _plan(summary, ("hybrid", 1, 1), "ac")
    holdings = {old.devices[r]: shard for r, shard in _shards(models["bert"], old).items()}
    expected = _shards(models["bert"], new)
    survivors = {d: holdings[d] for d in new.devices}
    direct = plan_moves(expected, new.devices, survivors, {})
    shared = plan_moves(expected, new.devices, holdings, {}, HoldingsIndex(holdings))  # b's rows must not be used
    assert direct.recipes == shared.recipes and direct.total == shared.total


def test_a_rank_rebuilds_its_shard_and_refuses_a_damaged_piece(models):
    summary = models["bert"][2]
    old, new = _plan(summary, ("hybrid", 1, 1, 1), "abc"), _plan(summary, ("hybrid", 1), "a")
    holdings = {old.devices[r]: shard for r, shard in _shards(models["bert"], old).items()}
    expected = _shards(models["bert"], new)[0]
    moves = plan_moves({0: expected}, new.devices, holdings, {"a": {"plan": "old", "rank": 0}})
    ring = Ring((0,), 0, 5.0, ("a",))
    weights, stats = rebuild(moves.recipes["a"], holdings["a"], moves.host_pieces["a"], ring)
    assert set(weights) == set(expected) and all(torch.equal(weights[k], v) for k, v in expected.items())
    assert stats["host"] == moves.by_device["a"].host > 0 and stats["peer"] == 0
    assert all(w.is_contiguous() for w in weights.values())
    damaged = {k: v.clone() for k, v in moves.host_pieces["a"].items()}
    key = next(iter(damaged))
    damaged[key].view(-1)[0] += 1.0
    with pytest.raises(BundleIntegrityError, match=key.split("#")[0]):
        rebuild(moves.recipes["a"], holdings["a"], damaged, ring)
