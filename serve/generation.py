"""Generation over HTTP: Galaxy's own request format and the OpenAI-style completions format.

    POST /v1/generate     {"prompt_ids": [1, 2, 3] | "prompt": "text", "max_new_tokens": 16,
                           "temperature": 0.0, "top_k": 0, "seed": 0, "stop_at_eos": true}
                       -> {"new_token_ids": [...], "text": "..." (with a tokenizer), "ttft_s": ...,
                           "tbt_s": [...], "prompt_tokens": n, "stopped_at_eos": false}
    POST /v1/completions  {"prompt": "text" | [ids] | [[ids]] (one prompt), "max_tokens": 16,
                           "temperature": 1.0, "top_k": 0, "seed": 0, "stop": ..., "model": ...}
                       -> {"id": "cmpl-...", "object": "text_completion", "created": t, "model": m,
                           "choices": [{"index": 0, "text": "...", "token_ids": [...],
                                        "finish_reason": "length" | "stop", "logprobs": null}],
                           "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}

The completions format follows OpenAI's legacy completions endpoint as exo, llama.cpp's server
and vLLM serve it (their defaults: temperature 1.0, max_tokens 16); `top_k` is vLLM's extension.
With `"stream": true` the answer is server-sent events, one `data: {chunk}` per new token as rank
0 makes it (the same object with the token's `text` and `token_ids` and `finish_reason` null),
then one with the `finish_reason`, a usage chunk when `stream_options.include_usage`, and
`data: [DONE]` (`CompletionChunks`). Text prompts need a tokenizer (galaxy-serve --tokenizer DIR,
a local checkpoint folder); without one a prompt is a list of token ids, and `text` is empty: the
new tokens are in `token_ids`. What the format has and Galaxy does not (several prompts or
choices, logprobs, stop strings, penalties) is refused with 400 naming the field, never silently
ignored.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Mapping

from galaxy.host.tokenizer import Tokenizer
from galaxy.runtime.errors import UsageError
from galaxy.runtime.generate import GenerationRequest, GenerationResult, check_request

from .codec import BadRequest

OPENAI_DEFAULTS = {"max_tokens": 16, "temperature": 1.0}
# Fields of the completions format whose default is the only value Galaxy takes.
_ONLY_DEFAULT = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": None,
                 "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": None}
_ACCEPTED = {"model", "prompt", "max_tokens", "temperature", "top_k", "seed", "user", "stop", "top_p", "stream",
             "stream_options"}
_ids = itertools.count(1)


def generate_request(body: Any, generation: Mapping, tokenizer: Tokenizer | None) -> GenerationRequest:
    """A /v1/generate body as a request the bundle can run; BadRequest naming the fault otherwise."""
    fields = _object(body)
    if "prompt" in fields and "prompt_ids" not in fields:
        fields["prompt_ids"] = _text_ids(fields.pop("prompt"), tokenizer)
    try:
        request = GenerationRequest.from_json(fields)
    except UsageError as exc:
        raise BadRequest(400, str(exc)) from exc
    return _checked(request, generation)


def completions_request(body: Any, generation: Mapping, tokenizer: Tokenizer | None) -> GenerationRequest:
    """An OpenAI-style /v1/completions body as a request; BadRequest naming the fault otherwise."""
    fields = _object(body)
    for name, default in _ONLY_DEFAULT.items():
        if name in fields and fields[name] != default:
            raise BadRequest(400, f"'{name}': {fields[name]!r} is not supported by galaxy-serve "
                                  f"(only {default!r}); one prompt, one choice")
    streaming(fields)
    unknown = sorted(set(fields) - _ACCEPTED - set(_ONLY_DEFAULT))
    if unknown:
        raise BadRequest(400, f"unknown fields {unknown}; galaxy-serve takes {sorted(_ACCEPTED)}")
    if fields.get("stop") not in (None, [], ""):
        raise BadRequest(400, "'stop' strings are not supported; generation stops at max_tokens or the model's "
                              "end-of-sequence token")
    if fields.get("top_p") not in (None, 1, 1.0):
        raise BadRequest(400, "'top_p' other than 1 is not supported; use top_k")
    if "prompt" not in fields:
        raise BadRequest(400, "'prompt' is required: a string (with a tokenizer) or a list of token ids")
    prompt = fields["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        ids = _text_ids(prompt, tokenizer)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = prompt
    else:
        raise BadRequest(400, "'prompt' must be one string or one non-empty list of token ids (one prompt per request)")
    try:
        max_tokens = fields.get("max_tokens")
        max_tokens = OPENAI_DEFAULTS["max_tokens"] if max_tokens is None else max_tokens  # 0 is refused below
        request = GenerationRequest(tuple(ids), int(max_tokens),
                                    float(fields.get("temperature", OPENAI_DEFAULTS["temperature"])),
                                    int(fields.get("top_k") or 0), int(fields.get("seed") or 0))
    except (TypeError, ValueError) as exc:
        raise BadRequest(400, f"max_tokens, temperature, top_k and seed must be numbers ({exc})") from exc
    if request.max_new_tokens < 1 or request.temperature < 0 or request.top_k < 0:
        raise BadRequest(400, "max_tokens must be >= 1, temperature and top_k >= 0")
    return _checked(request, generation)


def streaming(body: Any) -> tuple[bool, bool]:
    """(stream, include usage) of a completions body; BadRequest when they are not booleans."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):  # JSON 1 is not true here (1 == True in Python)
        raise BadRequest(400, f"'stream' must be true or false, not {stream!r}")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}
                                    and isinstance(options.get("include_usage", False), bool)):
        raise BadRequest(400, f"'stream_options' takes only {{\"include_usage\": true|false}}, not {options!r}")
    if options is not None and not stream:
        raise BadRequest(400, "'stream_options' is only for \"stream\": true")
    return bool(stream), bool((options or {}).get("include_usage"))


class CompletionChunks:
    """The chunks of one streamed completion: `token(index, id)` for each token as it comes (a
    repeated index, from a request answered again after a fault, gives nothing), `finish(result)`
    for the rest and the last chunks. With a tokenizer, a chunk's text is what the new token adds
    to the decoded text; a token that ends inside a character waits for the next. The last chunk
    carries the finish reason and any tokens no event brought."""

    def __init__(self, tokenizer: Tokenizer | None, model: str):
        self.tokenizer, self.model = tokenizer, model
        self.id, self.created = f"cmpl-galaxy-{next(_ids)}", int(time.time())
        self.ids: list[int] = []
        self.sent_text = ""
        self._waiting: list[int] = []  # tokens whose text is not out yet

    def token(self, index: int, token: int) -> dict | None:
        if index != len(self.ids):
            return None
        self.ids.append(token)
        self._waiting.append(token)
        text = self._new_text(final=False)
        if text is None:
            return None
        waiting, self._waiting = self._waiting, []
        return self._chunk(text, waiting, None)

    def finish(self, result: GenerationResult, include_usage: bool) -> list[dict]:
        rest = result.new_token_ids[len(self.ids):]  # tokens no event brought (normally none)
        self.ids += rest
        self._waiting += rest
        text = self._new_text(final=True) or ""
        waiting, self._waiting = self._waiting, []
        chunks = [self._chunk(text, waiting, "stop" if result.stopped_at_eos else "length")]
        if include_usage:
            completion = len(result.new_token_ids)
            chunks.append({**self._head(), "choices": [],
                           "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
                                     "total_tokens": result.prompt_tokens + completion}})
        return chunks

    def _new_text(self, final: bool) -> str | None:
        if self.tokenizer is None:
            return ""
        full = self.tokenizer.decode(self.ids)
        if not full.startswith(self.sent_text) or (full.endswith("\ufffd") and not final):
            return None  # the last token ends inside a character, or re-spells what came before
        new, self.sent_text = full[len(self.sent_text):], full
        return new

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def _chunk(self, text: str, token_ids: list[int], finish_reason: str | None) -> dict:
        return {**self._head(), "choices": [{"index": 0, "text": text, "token_ids": token_ids, "logprobs": None,
                                             "finish_reason": finish_reason}]}


def generate_response(result: GenerationResult, tokenizer: Tokenizer | None) -> dict:
    body = result.to_json()
    if tokenizer is not None:
        body["text"] = tokenizer.decode(result.new_token_ids)
    return body


def completions_response(result: GenerationResult, tokenizer: Tokenizer | None, model: str) -> dict:
    completion = len(result.new_token_ids)
    return {"id": f"cmpl-galaxy-{next(_ids)}", "object": "text_completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "text": tokenizer.decode(result.new_token_ids) if tokenizer else "",
                         "token_ids": result.new_token_ids, "logprobs": None,
                         "finish_reason": "stop" if result.stopped_at_eos else "length"}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": result.prompt_tokens + completion}}


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return dict(body)


def _text_ids(text: Any, tokenizer: Tokenizer | None) -> list[int]:
    if not isinstance(text, str):
        raise BadRequest(400, "'prompt' text must be a string")
    if tokenizer is None:
        raise BadRequest(400, "this server has no tokenizer, so it takes prompts as token ids ('prompt_ids' for "
                              "/v1/generate, a list of ids as 'prompt' for /v1/completions); or start galaxy-serve "
                              "with --tokenizer DIR")
    return tokenizer.encode(text)


def _checked(request: GenerationRequest, generation: Mapping) -> GenerationRequest:
    try:
        check_request(request, generation)
    except UsageError as exc:
        raise BadRequest(400, str(exc)) from exc
    return request
