"""The generation request formats of galaxy-serve (serve/generation.py): Galaxy's own and the
OpenAI-style completions, parsed and answered without a server (tests/dist/test_serve_generate.py
runs them over HTTP)."""
from __future__ import annotations

import pytest

from galaxy.runtime.generate import GenerationRequest, GenerationResult
from galaxy.serve.codec import BadRequest
from galaxy.serve.generation import CompletionChunks, completions_request, completions_response, generate_request

BUNDLE = {"max_len": 40, "prefill_len": 16, "vocab_size": 512}


def test_completions_take_openai_defaults_and_a_batch_of_one():
    request = completions_request({"model": "m", "prompt": [[3, 4, 5]], "seed": 9}, BUNDLE, None)
    assert request == GenerationRequest((3, 4, 5), 16, temperature=1.0, top_k=0, seed=9)


def test_the_completion_answer_has_choices_and_usage():
    body = completions_response(GenerationResult([7, 8], 0.1, [0.01], prompt_tokens=3, stopped_at_eos=True), None, "m")
    assert body["object"] == "text_completion" and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "text": "", "token_ids": [7, 8], "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize("body,message", [
    ({"prompt": [1], "n": 2}, "'n': 2 is not supported"),
    ({"prompt": [1], "stop": ["\n"]}, "'stop' strings are not supported"),
    ({"prompt": [1], "frequency_penalty": 0.5}, "'frequency_penalty'"),
    ({"prompt": [1], "mystery": 1}, "unknown fields \\['mystery'\\]"),
    ({"prompt": "text"}, "no tokenizer"),
    ({"prompt": [[1], [2]]}, "one prompt per request"),
    ({"max_tokens": 3}, "'prompt' is required"),
    ({"prompt": [1], "max_tokens": 40}, "context does not fit"),
    ({"prompt": [1], "stream": "yes"}, "'stream' must be true or false"),
    ({"prompt": [1], "max_tokens": 0}, "max_tokens must be >= 1"),
    ({"prompt": [1], "stream": True, "stream_options": {"include_usage": 1, "x": 2}}, "'stream_options' takes only"),
    ({"prompt": [1], "stream_options": {"include_usage": True}}, "only for \"stream\": true"),
])
def test_what_galaxy_does_not_do_is_refused_by_name(body, message):
    with pytest.raises(BadRequest, match=message) as raised:
        completions_request(body, BUNDLE, None)
    assert raised.value.status == 400


def test_generate_takes_prompt_ids_and_refuses_text_without_a_tokenizer():
    assert generate_request({"prompt_ids": [1, 2], "max_new_tokens": 3}, BUNDLE, None).prompt_ids == (1, 2)
    with pytest.raises(BadRequest, match="no tokenizer"):
        generate_request({"prompt": "hello", "max_new_tokens": 3}, BUNDLE, None)


class _Letters:
    """A tokenizer whose token k is letter k of `text`; token 99 is half a character (decodes to
    U+FFFD until token 98 follows it)."""

    def decode(self, ids):
        text = "".join("?" if t == 99 else chr(ord("a") + t) for t in ids)
        return text.replace("?x", "é").replace("?", "\ufffd")


def test_streamed_chunks_add_up_to_the_whole_answer():
    chunks = CompletionChunks(_Letters(), "m")
    streamed = [chunks.token(0, 0), chunks.token(1, 99), chunks.token(2, 23), chunks.token(1, 99)]
    assert [c and c["choices"][0]["text"] for c in streamed] == ["a", None, "é", None]  # a repeat gives nothing
    assert streamed[2]["choices"][0]["token_ids"] == [99, 23]
    result = GenerationResult([0, 99, 23, 1], 0.1, [0.01] * 3, prompt_tokens=2)
    last = chunks.finish(result, include_usage=True)
    assert len(last) == 2 and last[0]["choices"][0]["text"] == "b"  # the token no event brought, with the end
    assert last[0]["choices"][0]["finish_reason"] == "length" and last[-1]["choices"] == []
    assert last[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    every = [c for c in streamed + last if c and c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in every) == "aéb"
    assert [t for c in every for t in c["choices"][0]["token_ids"]] == [0, 99, 23, 1]
    assert len({c["id"] for c in every}) == 1
