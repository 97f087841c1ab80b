"""Galaxy+: a model larger than any one device runs across devices that together hold it."""
from __future__ import annotations

import pytest
import torch

from galaxy.compiler.pipeline import CompileOptions, compile_model
from galaxy.host.launcher import run_local
from helpers import ATOL, MODELS, RTOL

pytestmark = pytest.mark.dist

CLUSTER = """
format_version = 1
name = "three-small"
[[devices]]
name = "fast"
memory = "{mem}"
gflops = 80.0
[[devices]]
name = "slow-a"
memory = "{mem}"
gflops = 40.0
[[devices]]
name = "slow-b"
memory = "{mem}"
gflops = 40.0
[links]
bandwidth = "1 Gbit/s"
latency = "0.1 ms"
"""


def test_model_over_half_of_every_device_runs_on_three(tmp_path):
    cluster = tmp_path / "three-small.toml"
    cluster.write_text(CLUSTER.format(mem="560 KB"))  # the model's weights are 1.2 MB
    result = compile_model(str(MODELS / "llama.py"), CompileOptions(
        cluster=str(cluster), out_dir=str(tmp_path / "bundle"), size="tiny"))
    model_bytes = sum(f.stat().st_size for f in (tmp_path / "bundle" / "weights").iterdir())
    assert result.plan.world_size == 3
    for device in result.cluster.devices:
        assert device.mem_bytes < 0.5 * 1.2e6
    for rank in range(3):
        shard = (tmp_path / "bundle" / "weights" / f"rank_{rank}.safetensors").stat().st_size
        assert shard <= result.cluster.device(result.plan.devices[rank]).mem_bytes
    assert model_bytes > 1.0e6
    run = run_local(result.bundle_dir, timeout_s=60)
    reference = result.bundle_dir / "reference" / "outputs.safetensors"
    from safetensors.torch import load_file
    for name, expected in load_file(str(reference)).items():
        torch.testing.assert_close(run.outputs[name], expected, atol=ATOL, rtol=RTOL)


def test_model_that_fits_nowhere_says_by_how_much(tmp_path):
    from galaxy.compiler.errors import InfeasiblePlanError
    cluster = tmp_path / "three-tiny.toml"
    cluster.write_text(CLUSTER.format(mem="200 KB"))
    with pytest.raises(InfeasiblePlanError) as err:
        compile_model(str(MODELS / "llama.py"), CompileOptions(cluster=str(cluster), plan_only=True,
                                                                size="tiny"))
    assert "needs" in str(err.value) and "more in total" in str(err.value)
    assert set(err.value.shortfall_bytes_by_device) <= {"fast", "slow-a", "slow-b"}
    assert sum(err.value.shortfall_bytes_by_device.values()) > 0
