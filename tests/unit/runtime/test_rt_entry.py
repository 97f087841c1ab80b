"""run_rank's checks that fail before any network: environment, command line, manifest."""
import pytest

from galaxy.runtime import entry
from rt_bundle_fixture import make_tiny_bundle


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_bundle(tmp_path)


def _forward_in(bundle_dir, rank=0):
    """A forward whose code object claims to live in the bundle's rank module."""
    namespace = {}
    exec(compile("def forward(inputs, weights, ctx):\n    return None\n",
                 str(bundle_dir / f"rank_{rank}.py"), "exec"), namespace)
    return namespace["forward"]


def test_bundle_dir_comes_from_the_forward_module(tiny):
    assert entry.find_bundle_dir(_forward_in(tiny)) == tiny.resolve()


def test_torchrun_rank_must_match_the_module(tiny, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "2")
    code = entry.run_rank(0, _forward_in(tiny), ["--master", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == entry.EXIT_RUNTIME_ERROR
    assert len(err.splitlines()) == 1 and "RANK=2" in err and "rank_2.py" in err


def test_missing_master_is_a_one_line_error(tiny, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert entry.run_rank(1, _forward_in(tiny, 1), []) == entry.EXIT_RUNTIME_ERROR
    assert "--master HOST:PORT" in capsys.readouterr().err


def test_tampered_weights_stop_the_rank_before_it_connects(tiny, capsys):
    path = tiny / "weights/rank_1.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    assert entry.run_rank(1, _forward_in(tiny, 1), ["--master", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "weights/rank_1.safetensors" in err and "recompile" in err
