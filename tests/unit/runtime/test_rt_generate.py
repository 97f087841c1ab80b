"""Generation requests, their checks, their tensors and the sampler (runtime/generate.py)."""
from __future__ import annotations

import pytest
import torch

from galaxy.runtime.errors import UsageError
from galaxy.runtime.generate import (GenerationRequest, GenerationResult, _Sampler, check_request,
                                     request_from_tensors, request_tensors, result_from_tensors, result_tensors)

BUNDLE = {"max_len": 40, "prefill_len": 16, "vocab_size": 512}


def test_requests_and_results_survive_their_tensors():
    request = GenerationRequest((5, 17, 200), 12, temperature=0.7, top_k=40, seed=2**40 + 3, stop_at_eos=False)
    assert request_from_tensors(request_tensors(request)) == request
    result = GenerationResult([1, 2, 3], 0.25, [0.01, 0.02], prompt_tokens=3, stopped_at_eos=True)
    assert result_from_tensors(result_tensors(result)) == result


@pytest.mark.parametrize("request_,message", [
    (GenerationRequest((), 4), "the prompt is empty"),
    (GenerationRequest(tuple(range(17)), 4), "at most 16; compile with --seq-len 17"),
    (GenerationRequest((1, 2), 39), "context does not fit: 2 prompt tokens \\+ 39 new tokens = 41 > .* 40 .*at most 38"),
    (GenerationRequest((1, 512), 2), "must be in 0..511"),
])
def test_a_request_the_bundle_cannot_run_names_the_limit_and_the_fix(request_, message):
    with pytest.raises(UsageError, match=message):
        check_request(request_, BUNDLE)


def test_request_json_names_unknown_and_missing_fields():
    with pytest.raises(UsageError, match="unknown fields \\['temp'\\]"):
        GenerationRequest.from_json({"prompt_ids": [1], "max_new_tokens": 2, "temp": 1})
    with pytest.raises(UsageError, match="needs prompt_ids"):
        GenerationRequest.from_json({"max_new_tokens": 2})


def test_greedy_takes_the_largest_logit_and_a_seed_repeats_its_draws():
    logits = torch.randn(1, 1, 512, generator=torch.Generator().manual_seed(0))
    assert _Sampler(GenerationRequest((1,), 1))(logits) == int(logits.argmax())

    def draws(seed: int, top_k: int = 0) -> list[int]:
        sampler = _Sampler(GenerationRequest((1,), 1, temperature=1.0, top_k=top_k, seed=seed))
        return [sampler(logits) for _ in range(20)]
    assert draws(3) == draws(3) and draws(3) != draws(4)
    top = set(torch.topk(logits[0, -1], 5).indices.tolist())
    assert set(draws(5, top_k=5)) <= top
