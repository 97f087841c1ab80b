"""galaxy-serve with a generation bundle: POST /v1/generate and the OpenAI-style POST /v1/completions
against a real server and real rank processes, answers checked against Hugging Face generate.

The tokenizer is a word-level one made here (word "w<k>" is token k), saved to a folder like a
checkpoint's, so text goes in and out without downloading anything.
"""
from __future__ import annotations

import httpx
import pytest

from galaxy.compiler.pipeline import CompileOptions, compile_model
from helpers import MODELS
from serve_helpers import ServeProcess
from test_generate import MAX_LEN, NEW_TOKENS, PROMPT, SEQ_LEN, _hf_greedy

pytestmark = pytest.mark.dist

VOCAB = 512  # models/llama.py tiny


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{k}": k for k in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer_dir):
    bundle = tmp_path_factory.mktemp("serve-generate") / "llama"
    compile_model(str(MODELS / "llama.py"), CompileOptions(out_dir=str(bundle), size="tiny", seq_len=SEQ_LEN,
                                                           max_len=MAX_LEN, solver="even", decode="keep"))
    with ServeProcess(bundle, "--local", extra=("--tokenizer", str(tokenizer_dir))) as running:
        with httpx.Client(base_url=running.url, timeout=120) as client:
            yield client


@pytest.fixture(scope="module")
def reference():
    return _hf_greedy("llama")


def _words(ids) -> str:
    return " ".join(f"w{t}" for t in ids)


@pytest.mark.timeout(300)
def test_generate_gives_hugging_face_tokens_and_text(server, reference):
    answer = server.post("/v1/generate", json={"prompt_ids": list(PROMPT), "max_new_tokens": NEW_TOKENS})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["new_token_ids"] == reference
    assert body["text"] == _words(reference)
    assert body["ttft_s"] > 0 and len(body["tbt_s"]) == NEW_TOKENS - 1 and body["prompt_tokens"] == len(PROMPT)
    assert "cluster;dur=" in answer.headers["server-timing"]


@pytest.mark.timeout(300)
def test_openai_completions_with_a_text_prompt(server, reference):
    answer = server.post("/v1/completions", json={"model": "llama", "prompt": _words(PROMPT),
                                                  "max_tokens": NEW_TOKENS, "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["token_ids"] == reference and choice["text"] == _words(reference)
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": NEW_TOKENS,
                             "total_tokens": len(PROMPT) + NEW_TOKENS}


@pytest.mark.timeout(300)
def test_streamed_completions_come_token_by_token_as_server_sent_events(server, reference):
    import json

    body = {"model": "llama", "prompt": _words(PROMPT), "max_tokens": NEW_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with server.stream("POST", "/v1/completions", json=body) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in answer.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    tokens = [c["choices"][0] for c in chunks if c["choices"]]
    assert [t for c in tokens for t in c["token_ids"]] == reference
    assert "".join(c["text"] for c in tokens) == _words(reference)
    assert [len(c["token_ids"]) for c in tokens] == [1] * NEW_TOKENS + [0]  # one event a token, then the end
    assert [c["finish_reason"] for c in tokens] == [None] * NEW_TOKENS + ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == NEW_TOKENS


@pytest.mark.timeout(300)
def test_seeded_sampling_repeats_over_http(server):
    def sample(seed: int) -> list[int]:
        answer = server.post("/v1/completions", json={"prompt": list(PROMPT), "max_tokens": 8, "seed": seed})
        assert answer.status_code == 200, answer.text  # temperature defaults to 1.0, as in OpenAI's API
        return answer.json()["choices"][0]["token_ids"]
    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path,body,status,message", [
    ("/v1/completions", {"prompt": [1, 2], "stream": 1}, 400, "'stream' must be true or false"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": MAX_LEN}, 400, "context does not fit"),
    ("/v1/generate", {"prompt_ids": [1, VOCAB], "max_new_tokens": 2}, 400, "vocabulary"),
    ("/v1/generate", {"prompt_ids": list(range(SEQ_LEN + 1)), "max_new_tokens": 2}, 400, "prefill takes at most"),
    ("/v1/infer", {"inputs": {"input_ids": [[1, 2]]}}, 400, "generation bundle"),
])
def test_bad_requests_get_a_400_naming_the_cause(server, path, body, status, message):
    import re

    answer = server.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert re.search(message, answer.json()["error"]), answer.json()["error"]
    assert server.post("/v1/generate", json={"prompt_ids": [1, 2], "max_new_tokens": 1}).status_code == 200
