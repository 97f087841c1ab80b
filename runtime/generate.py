"""Generating tokens on a rank of a generation bundle: prefill, cache hand-off, decode steps.

A generation bundle (plan.json has "generation": compiler/ir/generation.py) holds, per rank, the
prefill module rank_<k>.py (its `prefill` keeps the prompt's keys and values in the cache) and,
for a rank that decodes, decode_<k>.py (one token through its layers against the cache). One
request, on every rank:

    1. rank 0 checks it against the bundle and broadcasts the prompt, right-padded to the
       compiled prefill length P (exact for a causal model: a real token never attends to a later
       pad), with its real length p and the number of new tokens
    2. every rank runs `prefill`; then the cache hand-off moves the prompt's keys and values where
       the decode layout wants them (Generation.cache_moves; nothing when decode keeps the heads)
    3. rank 0 runs the head on the last real prompt token (position p - 1: the decode module's
       prologue and epilogue, one token) and samples the first new token: time to first token
    4. each further token: rank 0 tells every rank the token, its position and whether to go on
       (a 3-number step message), the ranks of the decode plan run `forward` of decode_<k>.py (it
       writes the token's key and value at its position, over the pad the prefill left there,
       and attends to the cache up to that position), rank 0 samples from the logits
    5. it stops after `max_new_tokens`, or at the end-of-sequence token when asked to

Sampling (rank 0 only): greedy at temperature 0, else softmax(logits / T) restricted to the
`top_k` largest when given, drawn with a torch.Generator seeded with `seed`, so a seed gives the
same tokens every time. Every wait keeps the ring's timeout; a rank that sits decoding out waits
for one step message at a time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from . import bundle
from .collectives import broadcast_tensors
from .context import RankContext
from .errors import UsageError
from .p2p import irecv, isend, recv

log = logging.getLogger(__name__)

DECODE_PREFIX = "decode."  # decode weights that differ from the prefill's (compiler/lower/weights.py)
STEP_TAG = 900  # the step message; collectives use small tags and hand-offs 7 + i
_CACHE_TAG = 1000  # cache hand-off pieces: _CACHE_TAG + 2 x (layer) + (0 keys, 1 values)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: every token
    seed: int = 0
    stop_at_eos: bool = True

    @staticmethod
    def from_json(data: dict) -> "GenerationRequest":
        known = {"prompt_ids", "max_new_tokens", "temperature", "top_k", "seed", "stop_at_eos"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"generation request: unknown fields {unknown}; known: {sorted(known)}")
        try:
            request = GenerationRequest(tuple(int(t) for t in data["prompt_ids"]), int(data["max_new_tokens"]),
                                        float(data.get("temperature", 0.0)), int(data.get("top_k", 0)),
                                        int(data.get("seed", 0)), bool(data.get("stop_at_eos", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"generation request: {exc}; it needs prompt_ids (a list of token ids) and "
                             "max_new_tokens") from exc
        if request.temperature < 0 or request.top_k < 0 or request.max_new_tokens < 1:
            raise UsageError("generation request: max_new_tokens must be >= 1, temperature and top_k >= 0")
        return request


@dataclass
class GenerationResult:
    new_token_ids: list[int]
    ttft_s: float  # request start to the first new token
    tbt_s: list[float] = field(default_factory=list)  # time between consecutive new tokens
    prompt_tokens: int = 0
    stopped_at_eos: bool = False

    def to_json(self) -> dict:
        return {"new_token_ids": self.new_token_ids, "ttft_s": self.ttft_s, "tbt_s": self.tbt_s,
                "prompt_tokens": self.prompt_tokens, "stopped_at_eos": self.stopped_at_eos}


def check_request(request: GenerationRequest, generation: dict) -> None:
    """A request the bundle can run; UsageError naming the limit and the fix otherwise."""
    prompt, limit, length = len(request.prompt_ids), generation["max_len"], generation["prefill_len"]
    if prompt < 1:
        raise UsageError("the prompt is empty; give at least one token")
    if prompt > length:
        raise UsageError(f"the prompt has {prompt} tokens but this bundle's prefill takes at most {length}; "
                         f"compile with --seq-len {prompt} (and --max-len above it)")
    if prompt + request.max_new_tokens > limit:
        raise UsageError(f"the context does not fit: {prompt} prompt tokens + {request.max_new_tokens} new tokens "
                         f"= {prompt + request.max_new_tokens} > the bundle's cache of {limit} tokens (--max-len); "
                         f"ask for at most {limit - prompt} new tokens or compile with --max-len "
                         f"{prompt + request.max_new_tokens}")
    vocab = generation.get("vocab_size") or 0
    if vocab and any(not 0 <= t < vocab for t in request.prompt_ids):
        raise UsageError(f"prompt token ids must be in 0..{vocab - 1} (the model's vocabulary)")


# --- requests and results as tensors (galaxy-serve's control frames carry tensors) -------------

def request_tensors(request: GenerationRequest) -> dict[str, torch.Tensor]:
    """`request` as the tensors of a serving `run` frame (request_from_tensors reads them back)."""
    return {"prompt_ids": torch.tensor(request.prompt_ids, dtype=torch.int64),
            "settings": torch.tensor([request.max_new_tokens, request.top_k, request.seed, int(request.stop_at_eos)],
                                     dtype=torch.int64),
            "temperature": torch.tensor([request.temperature], dtype=torch.float64)}


def request_from_tensors(tensors: dict[str, torch.Tensor]) -> GenerationRequest:
    max_new, top_k, seed, stop = (int(v) for v in tensors["settings"].tolist())
    return GenerationRequest(tuple(int(t) for t in tensors["prompt_ids"].tolist()), max_new,
                             float(tensors["temperature"][0]), top_k, seed, bool(stop))


def result_tensors(result: GenerationResult) -> dict[str, torch.Tensor]:
    return {"new_token_ids": torch.tensor(result.new_token_ids, dtype=torch.int64),
            "ttft_s": torch.tensor([result.ttft_s], dtype=torch.float64),
            "tbt_s": torch.tensor(result.tbt_s, dtype=torch.float64),
            "counts": torch.tensor([result.prompt_tokens, int(result.stopped_at_eos)], dtype=torch.int64)}


def result_from_tensors(tensors: dict[str, torch.Tensor]) -> GenerationResult:
    prompt_tokens, stopped = (int(v) for v in tensors["counts"].tolist())
    return GenerationResult([int(t) for t in tensors["new_token_ids"].tolist()], float(tensors["ttft_s"][0]),
                            [float(t) for t in tensors["tbt_s"].tolist()], prompt_tokens, bool(stopped))


def serving_stream(state: "GenerationRank", on_token: Callable[[int, int], None] | None = None) -> Callable:
    """A serving rank's `stream` for a generation bundle: each request's tensors (every rank gets
    them) -> one generation; rank 0 yields its result as tensors, the others None. Rank 0 calls
    `on_token(index, token)` for the request in progress as each new token is made."""
    def stream(requests, weights, ctx):
        for tensors in requests:
            request = request_from_tensors(tensors)  # checked by galaxy-serve, again by generate on rank 0
            result = generate(state, request if ctx.rank == 0 else None, ctx, on_token if ctx.rank == 0 else None)
            yield result_tensors(result) if result is not None else None
    return stream


# --- a rank's state: its two programs, their weights and caches --------------------------------

@dataclass
class GenerationRank:
    """One rank of a generation bundle in memory."""

    rank: int
    plan: dict  # plan.json
    prefill: Callable  # rank_<k>.py's prefill(inputs, weights, ctx) -> (head inputs | None, static)
    decode: object | None  # decode_<k>.py as a module (forward, prologue, epilogue), None: sits out
    prefill_weights: dict
    decode_weights: dict
    decode_caches: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (keys, values)
    prefill_caches: dict[int, tuple[torch.Tensor, torch.Tensor]]

    @property
    def generation(self) -> dict:
        return self.plan["generation"]


def is_generation_bundle(plan: dict) -> bool:
    return "generation" in plan


def split_weights(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(prefill weights, decode weights) of a generation bundle's weight file: decode reads the
    prefill's tensors except where a `decode.` entry replaces one."""
    prefill = {k: v for k, v in weights.items() if not k.startswith(DECODE_PREFIX)}
    decode = {**prefill, **{k[len(DECODE_PREFIX):]: v for k, v in weights.items() if k.startswith(DECODE_PREFIX)}}
    return prefill, decode


def load_generation_rank(rank: int, plan: dict, bundle_dir: Path, module, weights: dict) -> GenerationRank:
    """This rank's programs with their caches installed in their weights (`weights`: its file)."""
    generation = plan["generation"]
    prefill_weights, decode_weights = split_weights(weights)
    model = plan["model"]
    dtype = next((t.dtype for t in weights.values() if t.is_floating_point()), torch.float32)

    def allocate(layout, tokens: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        shape = lambda groups: (model["batch"], groups, tokens, model["head_dim"])  # noqa: E731
        return {layer: (torch.zeros(shape(groups), dtype=dtype), torch.zeros(shape(groups), dtype=dtype))
                for layer, groups in layout}

    decode_caches = allocate(generation["decode_caches"][rank], generation["max_len"])
    keep = generation["layout"] == "keep"  # the prefill writes straight into the decode cache
    prefill_caches = decode_caches if keep else allocate(generation["prefill_caches"][rank], generation["prefill_len"])
    for target, caches in ((prefill_weights, prefill_caches), (decode_weights, decode_caches)):
        for layer, (keys, values) in caches.items():
            target[f"layers.{layer}.cache.k"], target[f"layers.{layer}.cache.v"] = keys, values
    decode_module = None
    if (bundle_dir / bundle.decode_module(rank)).is_file():
        decode_module = bundle.import_module_file(bundle_dir / bundle.decode_module(rank), f"decode_{rank}")
    return GenerationRank(rank, plan, module.prefill, decode_module, prefill_weights, decode_weights,
                          decode_caches, prefill_caches)


def install_prefill_caches(rank: int, plan: dict, weights: dict) -> dict:
    """`weights` with the caches the prefill module writes to (a plain forward of a generation bundle)."""
    generation = plan["generation"]
    model = plan["model"]
    dtype = next((t.dtype for t in weights.values() if t.is_floating_point()), torch.float32)
    tokens = generation["max_len"] if generation["layout"] == "keep" else generation["prefill_len"]
    prefill_weights, _ = split_weights(weights)
    for layer, groups in generation["prefill_caches"][rank]:
        for kind in "kv":
            prefill_weights[f"layers.{layer}.cache.{kind}"] = torch.zeros(
                (model["batch"], groups, tokens, model["head_dim"]), dtype=dtype)
    return prefill_weights


# --- one request --------------------------------------------------------------------------------

def generate(state: GenerationRank, request: GenerationRequest | None, ctx: RankContext,
             on_token: Callable[[int, int], None] | None = None) -> GenerationResult | None:
    """Run one request (rank 0 passes it, the others None). Returns the result on rank 0, which
    also calls `on_token(index, token)` for each new token as it is made (streaming)."""
    started = time.perf_counter()
    generation = state.generation
    world = ctx.world()
    decode_ctx = replace(ctx, stage_ranks=tuple(tuple(s["ranks"]) for s in generation["decode"]["stages"]))
    if ctx.rank == 0:
        check_request(request, generation)
        packed = _pack(request, generation["prefill_len"])
    shared = broadcast_tensors(packed if ctx.rank == 0 else None, world)
    prompt_len, max_new = (int(v) for v in shared["numbers"].tolist())
    inputs = {"input_ids": shared["input_ids"]}
    with torch.inference_mode():
        head_inputs, _ = state.prefill(inputs, state.prefill_weights, ctx)
        _move_cache(state, prompt_len, ctx)
        if ctx.rank != 0:
            _follow(state, decode_ctx)
            return None
        logits = _first_logits(state, head_inputs, inputs["input_ids"], prompt_len)
        sampler = _Sampler(request)
        tokens = [sampler(logits)]
        result = GenerationResult(tokens, time.perf_counter() - started, prompt_tokens=prompt_len)
        if on_token is not None:
            on_token(0, tokens[0])
        eos = generation.get("eos_token_id") if request.stop_at_eos else None
        last = time.perf_counter()
        while len(tokens) < max_new and tokens[-1] != eos:
            position = prompt_len + len(tokens) - 1
            logits = _step(state, tokens[-1], position, decode_ctx, go=True)
            tokens.append(sampler(logits))
            now = time.perf_counter()
            result.tbt_s.append(now - last)
            last = now
            if on_token is not None:
                on_token(len(tokens) - 1, tokens[-1])
        _step(state, tokens[-1], prompt_len + len(tokens) - 1, decode_ctx, go=False)
    result.stopped_at_eos = eos is not None and tokens[-1] == eos
    return result


def _pack(request: GenerationRequest, length: int) -> dict[str, torch.Tensor]:
    ids = torch.zeros((1, length), dtype=torch.int64)
    ids[0, :len(request.prompt_ids)] = torch.tensor(request.prompt_ids, dtype=torch.int64)
    ids[0, len(request.prompt_ids):] = request.prompt_ids[-1]  # pads: any token; no real token sees them
    return {"input_ids": ids, "numbers": torch.tensor([len(request.prompt_ids), request.max_new_tokens])}


def _first_logits(state: GenerationRank, head_inputs, prompt: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The logits after the last real prompt token: the decode module's head on that one position."""
    last = prompt_len - 1
    one = {"input_ids": prompt[:, last:last + 1], "position_ids": torch.tensor([[last]])}
    static = state.decode.prologue(one, state.decode_weights)
    sliced = [t[:, last:last + 1] for t in head_inputs]
    return state.decode.epilogue(*sliced, static, state.decode_weights)["logits"]


def _step(state: GenerationRank, token: int, position: int, ctx: RankContext, go: bool):
    """Rank 0: tell every rank the step, run it, return its logits (None once told to stop)."""
    message = torch.tensor([token, position, int(go)], dtype=torch.int64)
    world = ctx.world()
    sends = [isend(message, peer, world, STEP_TAG, "the decode step message") for peer in world.ranks if peer != 0]
    logits = _decode(state, token, position, ctx) if go else None
    for transfer in sends:
        transfer.wait()
    return logits


def _follow(state: GenerationRank, ctx: RankContext) -> None:
    """Every rank but 0: run decode steps as rank 0 announces them, until it says stop."""
    world = ctx.world()
    while True:
        token, position, go = recv(torch.empty(3, dtype=torch.int64), 0, world, "the decode step message",
                                   tag=STEP_TAG).tolist()
        if not go:
            return
        if state.decode is not None:
            _decode(state, token, position, ctx)


def _decode(state: GenerationRank, token: int, position: int, ctx: RankContext):
    inputs = {"input_ids": torch.tensor([[token]]), "position_ids": torch.tensor([[position]])}
    outputs = state.decode.forward(inputs, state.decode_weights, ctx)
    return outputs["logits"] if outputs is not None else None


def _move_cache(state: GenerationRank, prompt_len: int, ctx: RankContext) -> None:
    """The hand-off: every piece of the prompt's cache to the rank that decodes it (all posted at once)."""
    moves = state.generation["cache_moves"]
    world, me = ctx.world(), ctx.rank
    pending, sends = [], []
    for layer, sender, receiver, sender_first, receiver_first, groups in moves:
        for kind in (0, 1):
            tag = _CACHE_TAG + 2 * layer + kind
            if sender == me:
                piece = state.prefill_caches[layer][kind][:, sender_first:sender_first + groups, :prompt_len]
                if receiver == me:
                    state.decode_caches[layer][kind][:, receiver_first:receiver_first + groups, :prompt_len] = piece
                else:
                    sends.append(isend(piece.contiguous(), receiver, world, tag, f"the cache of layer {layer}"))
            elif receiver == me:
                target = state.decode_caches[layer][kind][:, receiver_first:receiver_first + groups, :prompt_len]
                pending.append((target, irecv(torch.empty_like(target), sender, world, tag,
                                              f"the cache of layer {layer}")))
    for target, transfer in pending:
        target.copy_(transfer.wait())
    for transfer in sends:
        transfer.wait()


class _Sampler:
    """Greedy at temperature 0, else a seeded draw from softmax(logits / T) (top_k largest if set)."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.generator = torch.Generator().manual_seed(request.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        scores = logits[0, -1].double()
        if self.request.temperature == 0:
            return int(torch.argmax(scores))
        scores = scores / self.request.temperature
        if self.request.top_k:
            kth = torch.topk(scores, min(self.request.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))
