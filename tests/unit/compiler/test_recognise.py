"""Recognition finds the blocks from graph patterns, and rejects what it cannot shard."""
from __future__ import annotations

import textwrap

import pytest
import torch

from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import capture
from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.passes.recognise import recognise
from helpers import captured_tiny


@pytest.mark.parametrize("kind,fused,gated,kv_ratio", [
    ("bert", False, False, 1), ("gpt2", True, False, 1), ("llama", False, True, 2)])
def test_blocks_of_each_family(kind, fused, gated, kv_ratio):
    captured, graph, summary = captured_tiny(kind)
    assert len(graph.layers) == summary.n_layers == 2
    att = graph.layers[0].attention
    assert (att.q.weight == att.k.weight) == fused  # GPT-2's c_attn holds q, k and v
    assert att.heads // att.kv_heads == kv_ratio
    assert summary.gated_mlp == gated
    assert len(graph.layers[0].mlp.projections) == (2 if gated else 1)
    # RoPE shows up as a verbatim per-head transform of q and k, only in Llama.
    assert bool(att.q_transform.nodes) == (kind == "llama")
    assert graph.layers[-1].after_mlp is None  # the last connective runs in the epilogue
    assert graph.output_names == tuple(captured.reference_outputs)


def _write_model(tmp_path, body: str):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_data_dependent_control_flow_is_reported(tmp_path):
    path = _write_model(tmp_path, """
        import torch
        class Branchy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(8, 8)
            def forward(self, x):
                if x.sum() > 0:
                    return self.lin(x)
                return x
        def build_model():
            return Branchy()
        def example_inputs():
            return {"x": torch.ones(1, 4, 8)}
    """)
    with pytest.raises(UntraceableModelError, match="torch.export could not capture"):
        capture(load_model(path))


def test_model_without_attention_is_reported(tmp_path):
    path = _write_model(tmp_path, """
        import torch
        def build_model():
            return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
        def example_inputs():
            return {"input": torch.ones(1, 4, 8)}
    """)
    with pytest.raises(UntraceableModelError, match="no scaled_dot_product_attention"):
        recognise(capture(load_model(path)))


TOKEN_MIXING_MODEL = """
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self, d=16, heads=2):
            super().__init__()
            self.heads = heads
            self.qkv = torch.nn.Linear(d, 3 * d)
            self.out = torch.nn.Linear(d, d)
            self.up = torch.nn.Linear(d, 4 * d)
            self.down = torch.nn.Linear(4 * d, d)
            self.norm = torch.nn.LayerNorm(d)

        def forward(self, x):
            b, s, d = x.shape
            q, k, v = self.qkv(x).split(d, dim=-1)
            q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
            x = x + self.out(a)
            x = x.cumsum(dim=1)  # mixes tokens: cannot be split by sequence
            return x + self.down(F.gelu(self.up(self.norm(x))))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])
        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    def build_model():
        torch.manual_seed(0)
        return Model().eval()

    def example_inputs():
        return {"x": torch.randn(1, 8, 16)}
"""


def test_connective_op_that_mixes_tokens_is_named(tmp_path):
    path = _write_model(tmp_path, TOKEN_MIXING_MODEL)
    with pytest.raises(UntraceableModelError, match="cumsum"):
        recognise(capture(load_model(path)))


def test_plain_module_through_symbolic_trace(tmp_path):
    """A plain nn.Module (no HF) is recognised too, captured via torch.fx.symbolic_trace."""
    path = _write_model(tmp_path, TOKEN_MIXING_MODEL.replace(
        "            x = x.cumsum(dim=1)  # mixes tokens: cannot be split by sequence\n", ""))
    graph = recognise(capture(load_model(path), method="symbolic"))
    assert len(graph.layers) == 2
    assert graph.layers[0].attention.heads == 2
    assert torch.is_tensor(next(iter(capture(load_model(path)).reference_outputs.values())))


@pytest.mark.parametrize("family,parallel_inputs,prepared,seq_major", [
    ("opt", 0, "q", ""), ("gptj", 1, "", "qk"), ("gpt_neox", 2, "", ""), ("phi", 1, "", ""),
    ("falcon", 1, "", ""), ("whisper", 0, "q", "")])
def test_graph_shapes_of_more_families(family, parallel_inputs, prepared, seq_major):
    """OPT and Whisper scale q between projection and SDPA; GPT-J, NeoX, Phi and Falcon run attention
    and MLP side by side (NeoX on two norms); GPT-J rotates before transposing the heads."""
    from model_families import captured_family
    _, graph, summary = captured_family(family)
    att = graph.layers[0].attention
    assert summary.parallel_block_inputs == parallel_inputs
    assert all(layer.parallel == bool(parallel_inputs) for layer in graph.layers)
    assert "".join(k for k in "qkv" if getattr(att, f"{k}_prepare").nodes) == prepared
    assert "".join(att.seq_major) == seq_major
    assert (att.heads, att.head_dim) == (6, 8)
    assert att.kv_heads == (1 if family == "falcon" else 6)  # Falcon-7B style multi-query
