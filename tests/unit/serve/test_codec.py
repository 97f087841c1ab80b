"""Request decoding against a bundle's example inputs, and response encoding."""
import json

import pytest
import torch
from safetensors.torch import load, save

from galaxy.serve.codec import BadRequest, decode_inputs, encode_outputs, expected_inputs

EXAMPLE = {"input_ids": torch.zeros(1, 4, dtype=torch.int64), "scale": torch.zeros(2)}


def test_safetensors_and_json_give_the_same_tensors():
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "scale": torch.tensor([0.5, 2.0])}
    from_octets, as_json = decode_inputs("application/octet-stream", save(inputs), EXAMPLE)
    assert not as_json and all(torch.equal(from_octets[k], v) for k, v in inputs.items())
    body = json.dumps({"inputs": {"input_ids": [[1, 2, 3, 4]], "scale": [0.5, 2]}}).encode()
    from_json, as_json = decode_inputs("application/json; charset=utf-8", body, EXAMPLE)
    assert as_json and from_json["scale"].dtype == torch.float32
    assert all(torch.equal(from_json[k], v) for k, v in inputs.items())


@pytest.mark.parametrize("content_type, body, status", [
    ("application/octet-stream", save({"input_ids": torch.zeros(1, 4, dtype=torch.int64)}), 422),
    ("application/octet-stream", save({"input_ids": torch.zeros(1, 5, dtype=torch.int64), "scale": torch.zeros(2)}), 422),
    ("application/json", b'{"inputs": {"input_ids": [[1.5, 2, 3, 4]], "scale": [1, 2]}}', 422),
    ("application/json", b"[1, 2]", 400),
    ("text/csv", b"1,2", 415),
])
def test_what_the_bundle_cannot_take_is_a_4xx(content_type, body, status):
    with pytest.raises(BadRequest) as info:
        decode_inputs(content_type, body, EXAMPLE)
    assert info.value.status == status


def test_expected_inputs_and_outputs_encoding():
    assert expected_inputs(EXAMPLE) == {"input_ids": {"shape": [1, 4], "dtype": "int64"},
                                        "scale": {"shape": [2], "dtype": "float32"}}
    outputs = {"logits": torch.arange(6.0).reshape(2, 3)}
    body, media_type = encode_outputs(outputs, as_json=False)
    assert media_type == "application/octet-stream" and torch.equal(load(body)["logits"], outputs["logits"])
    body, media_type = encode_outputs(outputs, as_json=True)
    assert json.loads(body)["outputs"]["logits"] == [[0, 1, 2], [3, 4, 5]]
