"""The Python client of galaxy-serve.

    from galaxy.serve import Client
    outputs = Client("http://127.0.0.1:8470").infer({"input_ids": ids})  # -> dict[str, Tensor]
    answer = Client(url).generate([1, 2, 3], max_new_tokens=8)          # a generation bundle
    answer["new_token_ids"], answer["ttft_s"], answer["tbt_s"]

Tensors travel as a safetensors file both ways. A 4xx/5xx answer raises ServeError with the
server's message (for a wrong input it names what the bundle expects).
"""
from __future__ import annotations

from typing import Mapping

import httpx
import torch

from galaxy.runtime.errors import GalaxyRuntimeError


class ServeError(GalaxyRuntimeError):
    """galaxy-serve answered with an error; `status` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"galaxy-serve answered {status}: {message}")
        self.status = status


class Client:
    def __init__(self, url: str, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from safetensors.torch import load, save

        body = save({name: t.detach().contiguous().clone() for name, t in inputs.items()})
        response = self._http.post("/v1/infer", content=body,
                                   headers={"Content-Type": "application/octet-stream"})
        _raise_for(response)
        return load(response.content)

    def generate(self, prompt_ids: list[int] | None = None, max_new_tokens: int = 16, *, prompt: str | None = None,
                 temperature: float = 0.0, top_k: int = 0, seed: int = 0, stop_at_eos: bool = True) -> dict:
        """POST /v1/generate: the new token ids (and text, when the server has a tokenizer), time to
        first token and times between tokens; give `prompt_ids` or, with a tokenizer, `prompt`."""
        body = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed,
                "stop_at_eos": stop_at_eos,
                **({"prompt_ids": list(prompt_ids)} if prompt_ids is not None else {"prompt": prompt})}
        response = self._http.post("/v1/generate", json=body)
        _raise_for(response)
        return response.json()

    def health(self) -> dict:
        """/healthz as a dict (its status is "ok" or "unavailable"; no exception for a 503)."""
        return self._http.get("/healthz").json()

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        _raise_for(response)
        return response.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    raise ServeError(response.status_code, message)
