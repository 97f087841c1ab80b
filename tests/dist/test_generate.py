"""Generation bundles (galaxy-compile --max-len) give Hugging Face's greedy tokens, token for token,
over real gloo processes on loopback and under the emulator, whatever the decode layout.

Exact token equality is only a fair test where the model's choice is clear: the random tiny
models and prompts here were checked to have their two largest logits at least
MIN_TOP2_GAP apart at every generated position (each test asserts it on Hugging Face's own
logits), so summation-order differences of the distributed run (about 1e-6) cannot flip a token.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from galaxy.compiler.pipeline import CompileOptions, compile_model
from galaxy.host.generate import generate_emulated, generate_local
from galaxy.runtime.generate import GenerationRequest
from _emulation import needs_emulation
from helpers import MODELS, REPO

pytestmark = pytest.mark.dist

PROMPT = (5, 17, 200, 33, 9, 71, 100)
NEW_TOKENS = 12
MIN_TOP2_GAP = 1e-3  # logits; the distributed run differs from one process by ~1e-6
SEQ_LEN, MAX_LEN = 16, 40


def _hf_greedy(kind: str, prompt=PROMPT, new_tokens: int = NEW_TOKENS) -> list[int]:
    """Hugging Face generate (its own KV cache) on the model.py's weights; checks the top-2 gap."""
    spec = importlib.util.spec_from_file_location(f"hf_{kind}", MODELS / f"{kind}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model("tiny")
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=0)
        logits = model(input_ids=out[:, :-1]).logits[0, len(prompt) - 1:]
    top2 = logits.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > MIN_TOP2_GAP, "near-tie: choose another prompt"
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Generation bundles over the 3 devices of home-3 (even prefill: every device holds heads), by decode layout."""
    made = {}

    def make(kind: str, decode: str) -> Path:
        if (kind, decode) not in made:
            out = tmp_path_factory.mktemp("generate") / f"{kind}-{decode}"
            compile_model(str(MODELS / f"{kind}.py"), CompileOptions(
                out_dir=str(out), size="tiny", seq_len=SEQ_LEN, max_len=MAX_LEN, solver="even", decode=decode))
            made[(kind, decode)] = out
        return made[(kind, decode)]
    return make


@pytest.fixture(scope="module")
def llama_reference():
    return _hf_greedy("llama")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("decode", ["keep", "single", "pipeline"])
def test_llama_greedy_tokens_equal_hugging_face(bundles, llama_reference, decode):
    """GQA (3 KV groups of 2 heads), RoPE; keep: the cache stays where the prefill wrote it, single and
    pipeline: it moves first."""
    bundle = bundles("llama", decode)
    plan = json.loads((bundle / "plan.json").read_text())["generation"]
    assert plan["layout"] == decode
    generated = generate_local(bundle, GenerationRequest(PROMPT, NEW_TOKENS), timeout_s=60)
    assert generated.new_token_ids == llama_reference
    assert generated.ttft_s > 0 and len(generated.runs[-1]["tbt_s"]) == NEW_TOKENS - 1


@pytest.mark.timeout(180)
def test_gpt2_cli_json_equals_hugging_face_and_seeded_sampling_repeats(bundles):
    """GPT-2 (learned positions, one fused QKV projection) through galaxy-generate --json; a seed
    gives the same sampled tokens every run, another seed others."""
    bundle = bundles("gpt2", "keep")
    ids = ",".join(map(str, PROMPT))
    cli = [sys.executable, "-m", "galaxy.host.generate", str(bundle), "--local", "--prompt-ids", ids,
           "--max-new-tokens", str(NEW_TOKENS), "--json", "--timeout", "60"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=150, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["new_token_ids"] == _hf_greedy("gpt2")
    assert result["ttft_s"] > 0 and result["tbt_s"] > 0

    sampled = generate_local(bundle, GenerationRequest(PROMPT, NEW_TOKENS, temperature=1.0, seed=3), repeat=2,
                             timeout_s=60)
    first, second = (run["new_token_ids"] for run in sampled.runs)
    assert first == second
    other = generate_local(bundle, GenerationRequest(PROMPT, NEW_TOKENS, temperature=1.0, seed=4), timeout_s=60)
    assert other.new_token_ids != first


def test_a_request_beyond_the_cache_is_refused_before_anything_starts(bundles):
    from galaxy.runtime.errors import UsageError

    with pytest.raises(UsageError, match="context does not fit.*at most 33 new tokens"):
        generate_local(bundles("llama", "keep"), GenerationRequest(PROMPT, MAX_LEN))


LATENCY_S = 0.002
CLUSTER = {"devices": [{"name": "desktop", "cpu_share": 1.0}, {"name": "laptop", "cpu_share": 0.5},
                       {"name": "tablet", "cpu_share": 0.5}],
           "default_link": {"bandwidth_bytes_per_s": 500e6 / 8, "latency_s": LATENCY_S}, "link_overrides": []}


@needs_emulation
@pytest.mark.timeout(240)
def test_llama_under_the_emulator_equals_hugging_face_and_pays_the_link_latency(bundles, llama_reference):
    """Tensor-parallel decode on 3 emulated devices with 2 ms links: the same tokens, and each step
    pays at least its messages in a row (one broadcast, then an all-reduce per block) times 2 ms."""
    bundle = bundles("llama", "keep")
    generated = generate_emulated(bundle, GenerationRequest(PROMPT, NEW_TOKENS), cluster=CLUSTER, timeout_s=60)
    assert generated.new_token_ids == llama_reference
    messages_in_a_row = 1 + 2 * 2  # BCAST, then attn and mlp all-reduces (direct: one message) of 2 layers
    assert generated.tbt_s >= messages_in_a_row * LATENCY_S, generated.tbt_s
