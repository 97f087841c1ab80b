"""models/*.py: tiny sizes build, run and export with the ops the recogniser looks for; 70b is meta-only."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"

# model file -> ops the exported tiny graph must contain (GPT-2's Conv1D projections are addmm)
EXPECTED_OPS = {
    "bert": {"aten.linear.default", "aten.layer_norm.default", "aten.scaled_dot_product_attention.default"},
    "gpt2": {"aten.addmm.default", "aten.linear.default", "aten.layer_norm.default",
             "aten.scaled_dot_product_attention.default"},
    "llama": {"aten.linear.default", "aten.rsqrt.default", "aten.silu.default",
              "aten.scaled_dot_product_attention.default"},
}


def import_model_file(name: str):
    spec = importlib.util.spec_from_file_location(f"test_models_{name}", MODELS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_tiny_builds_runs_and_exports(name):
    mod = import_model_file(name)
    model = mod.build_model("tiny")
    inputs = mod.example_inputs("tiny")
    assert not model.training
    assert model.config._attn_implementation == "sdpa"
    assert inputs["input_ids"].shape == (1, 32) and inputs["input_ids"].dtype == torch.int64

    with torch.no_grad():
        eager = model(**inputs)
        exported = torch.export.export(model, (), inputs, strict=False)
        replay = exported.module()(**inputs)
    ops = Counter(str(n.target) for n in exported.graph.nodes if n.op == "call_function")
    assert EXPECTED_OPS[name] <= set(ops), f"missing {EXPECTED_OPS[name] - set(ops)}"
    assert ops["aten.scaled_dot_product_attention.default"] == model.config.num_hidden_layers
    for key, value in eager.items():
        torch.testing.assert_close(replay[key], value)


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_deterministic_weights_and_inputs(name):
    mod = import_model_file(name)
    a, b = mod.build_model("tiny"), mod.build_model("tiny")
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    assert torch.equal(mod.example_inputs("tiny")["input_ids"], mod.example_inputs("tiny")["input_ids"])
    assert mod.example_inputs("tiny", seq_len=7)["input_ids"].shape == (1, 7)


def test_tiny_shapes_allow_uneven_splits():
    for name in EXPECTED_OPS:
        config = import_model_file(name).build_model("tiny").config
        assert config.num_attention_heads == 6
        assert config.hidden_size // config.num_attention_heads * config.num_attention_heads == config.hidden_size
    llama = import_model_file("llama").build_model("tiny").config
    assert llama.num_key_value_heads < llama.num_attention_heads  # GQA
    assert llama.intermediate_size % 8 == 0 and llama.use_cache is False


def test_bert_inputs_have_mask_and_token_types():
    inputs = import_model_file("bert").example_inputs("tiny")
    assert sorted(inputs) == ["attention_mask", "input_ids", "token_type_ids"]
    assert bool((inputs["attention_mask"] == 1).all()) and bool((inputs["token_type_ids"] == 0).all())


def test_sizes_listed_and_unknown_size_rejected():
    assert set(import_model_file("bert").SIZES) == {"tiny", "base", "large"}
    assert set(import_model_file("gpt2").SIZES) == {"tiny", "base", "medium"}
    assert set(import_model_file("llama").SIZES) == {"tiny", "base", "70b"}
    with pytest.raises(ValueError, match="unknown BERT size 'huge'"):
        import_model_file("bert").build_model("huge")
    with pytest.raises(ValueError, match="out of range"):
        import_model_file("gpt2").example_inputs("tiny", seq_len=10_000)


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def test_llama_70b_builds_on_meta_without_allocating():
    mod = import_model_file("llama")
    before = _rss_bytes()
    model = mod.build_model("70b")
    grown = _rss_bytes() - before
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "meta" for t in tensors)
    assert 70e9 < sum(p.numel() for p in model.parameters()) < 71e9
    assert grown < 512 * 2**20, f"building 70b on meta grew RSS by {grown / 2**20:.0f} MiB"
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (80, 8192, 64, 8, 28672, 128256)
    inputs = mod.example_inputs("70b")
    assert inputs["input_ids"].device.type == "meta" and inputs["input_ids"].shape == (1, 256)
