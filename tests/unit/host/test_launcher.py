"""galaxy-run end to end on the tiny hand-made bundle (3 ranks on loopback, one with 0 tokens)."""
import shutil

import pytest
import torch

from galaxy.host import launcher
from galaxy.runtime import bundle
from galaxy.host.launcher import LaunchError, RunResult, compare_with_reference, run_local
from rt_bundle_fixture import make_tiny_bundle

pytestmark = pytest.mark.dist
ATOL = RTOL = 1e-4  # fp32 on the wire; the launcher's own verdict uses the same numbers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("launcher"))


@pytest.mark.timeout(60)
def test_cli_runs_the_bundle_and_matches_the_reference(tiny, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    code = launcher.main([str(tiny), "--local", "--output", str(out), "--repeat", "2",
                          "--warmup", "1", "--threads", "1", "--timeout", "30", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "over 2 run(s)" in stdout and "(within atol=0.0001, rtol=0.0001)" in stdout
    reference = bundle.load_tensors(tiny / bundle.REFERENCE_OUTPUTS)
    torch.testing.assert_close(bundle.load_tensors(out)["y"], reference["y"], atol=ATOL, rtol=RTOL)


def test_reference_comparison_reports_each_output():
    result = RunResult({"y": torch.ones(3), "z": torch.zeros(2)}, [0.1], None)
    compare_with_reference(result, {"y": torch.ones(3) + 1e-3, "z": torch.zeros(2),
                                    "w": torch.zeros(1)}, (1e-4, 1e-4))
    assert result.within_tolerance is False
    assert result.max_abs_error["z"] == 0 and result.max_abs_error["w"] == float("inf")
    assert abs(result.max_abs_error["y"] - 1e-3) < 1e-6


@pytest.mark.timeout(60)
def test_a_crashing_rank_is_named_and_the_others_are_stopped(tiny):
    with pytest.raises(LaunchError, match=r"rank 1 \(beta\).*injected failure") as info:
        run_local(tiny, threads=1, timeout_s=30, env={"GALAXY_TEST_FAIL_RANK": "1"})
    assert info.value.rank == 1


@pytest.mark.timeout(60)
def test_a_tampered_bundle_is_refused_by_the_rank_that_reads_it(tiny, tmp_path):
    copy = shutil.copytree(tiny, tmp_path / "copy")
    (copy / "weights/rank_2.safetensors").write_bytes(b"not the weights")
    with pytest.raises(LaunchError, match=r"rank 2 \(gamma\).*weights/rank_2\.safetensors"):
        run_local(copy, threads=1, timeout_s=30)



@pytest.mark.timeout(90)
def test_a_terminated_galaxy_run_leaves_no_rank_running(tiny, tmp_path):
    """SIGTERM while the ranks stream: galaxy-run stops them all and exits 143."""
    import signal
    import subprocess
    import sys
    import time

    from serve_helpers import alive

    proc = subprocess.Popen([sys.executable, "-m", "galaxy.host.launcher", str(tiny), "--local", "--requests", "2000",
                             "--repeat", "50", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ranks, deadline = [], time.monotonic() + 60
    while len(ranks) < 3 and time.monotonic() < deadline:
        ranks = [int(p) for p in subprocess.run(["pgrep", "-f", f"{tiny}/rank_"], capture_output=True,
                                                text=True).stdout.split()]
        time.sleep(0.2)
    assert len(ranks) == 3, "the ranks did not start"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, output
    assert "stopped every rank" in output
    assert alive(ranks) == []


@pytest.mark.parametrize("flag", [["--cpu-mode", "quota"], ["--nic", "shared"], ["--cluster-json", "c.json"]])
def test_emulator_options_need_emulate(flag, capsys):
    from galaxy.host.launcher import main
    with pytest.raises(SystemExit) as info:
        main(["bundle", "--local", *flag])
    assert info.value.code == 2 and "only apply with --emulate" in capsys.readouterr().err
