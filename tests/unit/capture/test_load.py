"""load_model: each source kind, and the errors that name cause and fix."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from galaxy.compiler.capture.load import LoadedModel, load_model
from galaxy.compiler.errors import ModelLoadError

MODELS_DIR = Path(__file__).resolve().parents[3] / "models"


def tiny_checkpoint(folder: Path, name: str = "gpt2", bump: float = 0.01) -> LoadedModel:
    """Save models/<name>.py tiny, with weights moved off the seed-0 init, as an HF checkpoint."""
    ref = load_model(MODELS_DIR / f"{name}.py", size="tiny")
    with torch.no_grad():
        for p in ref.module.parameters():
            p.add_(bump)
    ref.module.save_pretrained(folder)
    return ref


@pytest.mark.parametrize("name, cls", [("bert", "BertModel"), ("gpt2", "GPT2LMHeadModel"),
                                       ("llama", "LlamaForCausalLM")])
def test_model_py(name, cls):
    loaded = load_model(MODELS_DIR / f"{name}.py", size="tiny", seq_len=16)
    assert loaded.kind == "model.py" and loaded.name == f"{name}-tiny"
    assert type(loaded.module).__name__ == cls and not loaded.module.training
    assert loaded.example_inputs["input_ids"].shape == (1, 16)
    assert str(loaded).startswith(f"{name}-tiny (model.py, {cls}")


def test_model_py_without_parameters(tmp_path):
    (tmp_path / "helper.py").write_text("WIDTH = 8\n")
    (tmp_path / "plain.py").write_text(
        "import torch\nfrom helper import WIDTH\n"
        "def build_model():\n    return torch.nn.Linear(WIDTH, WIDTH).train()\n"
        "def example_inputs():\n    return {'input': torch.ones(1, WIDTH)}\n")
    loaded = load_model(tmp_path / "plain.py")
    assert loaded.name == "plain" and not loaded.module.training  # eval() applied, sibling import works
    with pytest.raises(ModelLoadError, match="takes no 'size' parameter"):
        load_model(tmp_path / "plain.py", size="base")
    with pytest.raises(ModelLoadError, match="takes no 'seq_len' parameter"):
        load_model(tmp_path / "plain.py", seq_len=8)


def test_model_py_missing_build_model(tmp_path):
    (tmp_path / "m.py").write_text("def example_inputs():\n    return {}\n")
    with pytest.raises(ModelLoadError, match=r"defines no function build_model\(\).*must define build_model"):
        load_model(tmp_path / "m.py")


@pytest.mark.parametrize("body, match", [
    ("raise ImportError('no such lib')", "importing .* failed: ImportError: no such lib"),
    ("def build_model():\n    return 3\ndef example_inputs():\n    return {}", "not a torch.nn.Module"),
    ("import torch\ndef build_model():\n    return torch.nn.Identity()\ndef example_inputs():\n    return {'x': 1}",
     r"example_inputs\(\)\['x'\] is a int"),
    ("def build_model(size='a'):\n    raise ValueError('unknown size')\ndef example_inputs():\n    return {}",
     r"build_model\(size='b'\) raised ValueError: unknown size"),
])
def test_model_py_bad_contents(tmp_path, body, match):
    (tmp_path / "m.py").write_text(body + "\n")
    with pytest.raises(ModelLoadError, match=match):
        load_model(tmp_path / "m.py", size="b" if "size=" in body else None)


def test_hf_config_file(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt", "llama")
    loaded = load_model(tmp_path / "ckpt" / "config.json", seq_len=24)
    assert loaded.kind == "hf-config" and loaded.name == "ckpt"
    assert type(loaded.module).__name__ == "LlamaForCausalLM"
    assert loaded.module.config._attn_implementation == "sdpa" and loaded.module.config.use_cache is False
    assert loaded.example_inputs["input_ids"].shape == (1, 24)
    again = load_model(tmp_path / "ckpt" / "config.json")
    assert again.example_inputs["input_ids"].shape == (1, 128)  # the default length
    for a, b in zip(loaded.module.parameters(), again.module.parameters()):
        assert torch.equal(a, b)  # seeded


def test_hf_config_folder_without_weights_is_config_kind(tmp_path, caplog):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3,
         "intermediate_size": 96, "vocab_size": 100, "max_position_embeddings": 64}))
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path)
    assert loaded.kind == "hf-config" and type(loaded.module).__name__ == "BertModel"
    assert "random weights" in caplog.text
    assert loaded.example_inputs["input_ids"].shape == (1, 64)  # default 128, capped at the positions
    with pytest.raises(ModelLoadError, match="out of range 1..64"):
        load_model(tmp_path, seq_len=65)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_hf_checkpoint_folder(tmp_path, name):
    ref = tiny_checkpoint(tmp_path, name)
    loaded = load_model(tmp_path, seq_len=16)
    assert loaded.kind == "hf-checkpoint"
    ids = ref.example_inputs["input_ids"][:, :16]
    with torch.no_grad():
        expected = ref.module(input_ids=ids)
        got = loaded.module(input_ids=ids)
    for key in expected.keys():
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_checkpoint_tied_head_counts_as_loaded(tmp_path):
    tiny_checkpoint(tmp_path, "gpt2")
    loaded = load_model(tmp_path)  # GPT-2's lm_head.weight is not in the file: tied to wte
    assert loaded.module.lm_head.weight is loaded.module.transformer.wte.weight


def test_checkpoint_sharded_and_bf16(tmp_path):
    ref = load_model(MODELS_DIR / "llama.py", size="tiny")
    ref.module.config.save_pretrained(tmp_path)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in ref.module.state_dict().items()}
    keys = sorted(state)
    save_file({k: state[k] for k in keys[::2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[1::2]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    loaded = load_model(tmp_path)
    weight = loaded.module.model.embed_tokens.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, state["model.embed_tokens.weight"].float(), rtol=0, atol=0)


def test_checkpoint_missing_and_unexpected_keys(tmp_path, caplog):
    ref = load_model(MODELS_DIR / "llama.py", size="tiny")
    ref.module.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in ref.module.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints have these
    with caplog.at_level(logging.WARNING):
        save_file(state, str(tmp_path / "model.safetensors"))
        load_model(tmp_path)
    assert "ignored 1 checkpoint tensor(s)" in caplog.text and "rotary_emb.inv_freq" in caplog.text

    del state["model.norm.weight"], state["lm_head.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"lacks 2 of the model's parameters: lm_head.weight, model.norm.weight"):
        load_model(tmp_path)


def test_checkpoint_wrong_shapes(tmp_path):
    ref = load_model(MODELS_DIR / "llama.py", size="tiny")
    ref.module.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in ref.module.state_dict().items()}
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="do not fit the model built from config.json"):
        load_model(tmp_path)


def test_base_model_from_task_checkpoint_strips_prefix(tmp_path, caplog):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(3)
    task = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=3,
                                                    intermediate_size=96, vocab_size=100))
    task.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path)
    assert type(loaded.module).__name__ == "BertModel"
    assert torch.equal(loaded.module.pooler.dense.weight, task.bert.pooler.dense.weight)
    assert "classifier.weight" in caplog.text


def test_bin_only_checkpoint_is_refused(tmp_path):
    tiny_checkpoint(tmp_path, "gpt2")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="only pickled weights .*pytorch_model.bin.*Convert them to safetensors"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="never unpickles"):
        load_model(tmp_path / "pytorch_model.bin")


def test_materialize_false_builds_on_meta(tmp_path):
    tiny_checkpoint(tmp_path, "llama")
    loaded = load_model(tmp_path, materialize=False)
    assert all(p.device.type == "meta" for p in loaded.module.parameters())
    assert loaded.example_inputs["input_ids"].device.type == "meta"


@pytest.mark.parametrize("setup, match", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "has no config.json"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{oops")), "not valid JSON"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text('{"hidden_size": 4}')), "no 'model_type' key"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "no-such-arch"}')),
     "cannot read model type 'no-such-arch'.*upgrade transformers or write a model.py"),
])
def test_bad_sources(tmp_path, setup, match):
    source = tmp_path / "src"
    setup(source)
    with pytest.raises(ModelLoadError, match=match):
        load_model(source)


def test_size_is_refused_for_hf_sources(tmp_path):
    tiny_checkpoint(tmp_path, "gpt2")
    with pytest.raises(ModelLoadError, match="applies only to a model.py"):
        load_model(tmp_path, size="tiny")


def test_hub_offline_only_while_loading(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "probe.py").write_text(
        "import os, torch\n"
        "def build_model():\n    return torch.nn.Identity()\n"
        "def example_inputs():\n"
        "    return {'offline': torch.tensor([os.environ.get('HF_HUB_OFFLINE') == '1'])}\n")
    loaded = load_model(tmp_path / "probe.py")
    assert bool(loaded.example_inputs["offline"]) and "HF_HUB_OFFLINE" not in os.environ


def test_positional_example_inputs_take_forward_parameter_names(tmp_path):
    """example_inputs() may return a tuple, as torch.export takes it: mapped to forward's parameters."""
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "class Pair(torch.nn.Module):\n"
        "    def forward(self, tokens, scale=None):\n"
        "        return tokens * 2\n"
        "def build_model():\n    return Pair()\n"
        "def example_inputs():\n    return (torch.ones(1, 4), torch.ones(1))\n")
    loaded = load_model(tmp_path / "m.py")
    assert list(loaded.example_inputs) == ["tokens", "scale"]
    (tmp_path / "m.py").write_text((tmp_path / "m.py").read_text().replace(
        "(torch.ones(1, 4), torch.ones(1))", "(torch.ones(1), torch.ones(1), torch.ones(1))"))
    with pytest.raises(ModelLoadError, match="returned 3 positional inputs, but Pair.forward takes 2"):
        load_model(tmp_path / "m.py")
