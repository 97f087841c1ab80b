"""The generation request formats of galaxy-serve (serve/generation.py): Galaxy's own and the
OpenAI-style completions, parsed and answered without a server (tests/dist/test_serve_generate.py
runs them over HTTP)."""
from __future__ import annotations

import pytest

from galaxy.runtime.generate import GenerationRequest, GenerationResult
from galaxy.serve.codec import BadRequest
from galaxy.serve.generation import completions_request, completions_response, generate_request

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
])
def test_what_galaxy_does_not_do_is_refused_by_name(body, message):
    with pytest.raises(BadRequest, match=message) as raised:
        completions_request(body, BUNDLE, None)
    assert raised.value.status == 400


def test_generate_takes_prompt_ids_and_refuses_text_without_a_tokenizer():
    assert generate_request({"prompt_ids": [1, 2], "max_new_tokens": 3}, BUNDLE, None).prompt_ids == (1, 2)
    with pytest.raises(BadRequest, match="no tokenizer"):
        generate_request({"prompt": "hello", "max_new_tokens": 3}, BUNDLE, None)
