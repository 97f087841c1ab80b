"""More model families, recognised from their graphs: small random Hugging Face models (configs
only) on 3 uneven devices with a forced multi-device split, checked against the single-process
model. Each family brings a graph shape of its own (tests/model_families.py)."""
from __future__ import annotations

import pytest

from helpers import manual_plan, pipeline_plan
from model_families import FAMILIES, captured_family
from test_end_to_end import _run

pytestmark = pytest.mark.dist

# Uneven heads (KV groups), columns and tokens over 3 devices; Falcon has one KV head, so one rank
# holds every head and the others none.
UNEVEN_3 = ([2, 1, 1], [3, 2, 1], [5, 2, 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_family_on_three_uneven_devices(tmp_path, family):
    model = captured_family(family)
    _run(tmp_path, model, manual_plan(model[2], *UNEVEN_3))


# Parallel blocks under every other schedule shape: tiled (GPT-J: one fused input GEMM), sequence
# parallelism only (par:KVAG), Megatron-style (par:AR) and a pipeline.
LAYOUTS = {
    "gptj-tiles-3": ("gptj", lambda s: manual_plan(s, *UNEVEN_3, tiles=3)),
    "gpt_neox-sequence": ("gpt_neox", lambda s: manual_plan(s, None, None, [3, 2, 1], tiles=2)),
    "phi-megatron": ("phi", lambda s: manual_plan(s, [1, 1, 1], [1, 1, 1], [1, 1, 1], shape="tensor")),
    "falcon-pipeline": ("falcon", lambda s: pipeline_plan(s, [(1, [2, 1]), (1, [1])])),
    "opt-sequence": ("opt", lambda s: manual_plan(s, None, None, [2, 1, 1])),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_family_layouts(tmp_path, layout):
    family, plan = LAYOUTS[layout]
    model = captured_family(family)
    _run(tmp_path, model, plan(model[2]))
