"""Request bodies in, response bodies out: safetensors or JSON, checked against the bundle.

    POST /v1/infer  Content-Type: application/octet-stream   a safetensors file of named inputs
                    Content-Type: application/json           {"inputs": {"input_ids": [[...]]}}

The answer has the request's format: a safetensors file of the outputs, or
{"outputs": {name: nested lists}, "shapes": {...}, "dtypes": {...}}. Anything the bundle cannot
take is a `BadRequest` with a 4xx status and a message naming what the bundle expects.
"""
from __future__ import annotations

import json
from typing import Mapping

import torch

from galaxy.runtime.entry import check_inputs
from galaxy.runtime.errors import UsageError

SAFETENSORS = "application/octet-stream"
JSON = "application/json"
MAX_BODY_BYTES = 64 << 20


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def expected_inputs(example: Mapping[str, torch.Tensor]) -> dict:
    """{name: {"shape": [...], "dtype": "int64"}}: what the bundle takes."""
    return {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for name, t in sorted(example.items())}


def decode_inputs(content_type: str, body: bytes, example: Mapping[str, torch.Tensor]) -> tuple[dict, bool]:
    """(inputs by name, whether the request was JSON); BadRequest when unusable."""
    kind = content_type.split(";")[0].strip().lower()
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body has {len(body)} bytes; at most {MAX_BODY_BYTES} are taken")
    if kind == SAFETENSORS:
        inputs, as_json = _from_safetensors(body), False
    elif kind == JSON:
        inputs, as_json = _from_json(body, example), True
    else:
        raise BadRequest(415, f"Content-Type {content_type or '(none)'} is not taken; send {SAFETENSORS} "
                              f"(a safetensors file of named inputs) or {JSON} ({{\"inputs\": {{...}}}})")
    try:
        check_inputs(inputs, example, what="the request")
    except UsageError as exc:
        raise BadRequest(422, str(exc)) from exc
    return inputs, as_json


def encode_outputs(outputs: Mapping[str, torch.Tensor], as_json: bool) -> tuple[bytes, str]:
    if as_json:
        body = {"outputs": {name: t.tolist() for name, t in outputs.items()},
                "shapes": {name: list(t.shape) for name, t in outputs.items()},
                "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in outputs.items()}}
        return json.dumps(body).encode(), JSON
    from safetensors.torch import save

    return save({name: t.contiguous().clone() for name, t in outputs.items()}), SAFETENSORS


def _from_safetensors(body: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(body)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BadRequest(400, f"the body is not a safetensors file ({exc}); write one with "
                              "safetensors.torch.save({name: tensor})") from exc


def _from_json(body: bytes, example: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), dict):
        raise BadRequest(400, 'the JSON body must be {"inputs": {"NAME": [[...]], ...}}')
    inputs = {}
    for name, values in document["inputs"].items():
        try:
            tensor = torch.tensor(values)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BadRequest(400, f"input {name!r} is not a rectangular array of numbers ({exc})") from exc
        wanted = example.get(name)
        if wanted is not None:
            if tensor.numel() and tensor.is_floating_point() and not wanted.is_floating_point():
                raise BadRequest(422, f"input {name!r} has fractional numbers; this bundle takes {wanted.dtype} "
                                      "(integers)")
            tensor = tensor.to(wanted.dtype)
        inputs[name] = tensor
    return inputs
