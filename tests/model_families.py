"""Small random Hugging Face models of the families Galaxy recognises from their graphs, built from
configs only (never weights): one per graph shape beyond BERT, GPT-2 and Llama.

    opt        q scaled between its projection and SDPA
    gptj       parallel attention/MLP on one input; RoPE in [batch, seq, heads, dim]
    gpt_neox   parallel blocks reading two norms of one input; q, k, v interleaved by head
    phi        parallel attention/MLP on one input; partial RoPE
    falcon     parallel blocks, x @ W.T projections, q, k, v cut from one projection by heads,
               one KV head (multi-query)
    whisper    an encoder with a convolution prologue and q scaled before SDPA, from a model.py
               whose example_inputs() returns a tuple
"""
from __future__ import annotations

import functools
import json
import tempfile
import textwrap
from pathlib import Path

from galaxy.compiler.pipeline import capture_model

SEQ = 16
TINY = dict(vocab_size=128, max_position_embeddings=64)
CONFIGS = {
    "opt": ("OPTConfig", dict(TINY, hidden_size=48, num_hidden_layers=2, ffn_dim=96, num_attention_heads=6,
                              word_embed_proj_dim=48, architectures=["OPTForCausalLM"])),
    "gptj": ("GPTJConfig", dict(vocab_size=128, n_embd=48, n_layer=2, n_head=6, rotary_dim=4, n_positions=64,
                                architectures=["GPTJForCausalLM"])),
    "gpt_neox": ("GPTNeoXConfig", dict(TINY, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                       intermediate_size=96, rotary_pct=0.5, use_parallel_residual=True,
                                       architectures=["GPTNeoXForCausalLM"])),
    "phi": ("PhiConfig", dict(TINY, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                              intermediate_size=96, partial_rotary_factor=0.5, architectures=["PhiForCausalLM"])),
    "falcon": ("FalconConfig", dict(TINY, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                                    parallel_attn=True, new_decoder_architecture=False, multi_query=True,
                                    bias=False, architectures=["FalconForCausalLM"])),
}
WHISPER_MODEL = '''
    """Whisper's audio encoder, random weights from a small config."""
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    CONFIG = WhisperConfig(num_mel_bins=8, d_model=48, encoder_layers=2, encoder_attention_heads=6,
                           encoder_ffn_dim=96, max_source_positions=16, attn_implementation="sdpa")

    def build_model():
        torch.manual_seed(0)
        return WhisperEncoder(CONFIG).eval()

    def example_inputs():
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(1, 8, 32, generator=generator),)  # positional, as torch.export takes them
'''
FAMILIES = (*CONFIGS, "whisper")


def model_file(family: str, folder: Path) -> Path:
    """The MODEL galaxy-compile takes for `family`: an HF config.json, or Whisper's model.py."""
    if family == "whisper":
        path = folder / "whisper_encoder.py"
        path.write_text(textwrap.dedent(WHISPER_MODEL))
        return path
    import transformers

    class_name, fields = CONFIGS[family]
    path = folder / family / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(getattr(transformers, class_name)(**fields).to_dict()))
    return path


@functools.cache
def captured_family(family: str):
    """(captured, graph, summary) of `family`'s tiny model."""
    with tempfile.TemporaryDirectory(prefix="galaxy-family-") as tmp:
        path = model_file(family, Path(tmp))
        return capture_model(str(path), None, None if family == "whisper" else SEQ)
