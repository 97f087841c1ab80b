"""Generation: how a bundle turns a prompt into tokens. Plain data beside the prefill Plan.

A generation bundle runs two plans over the same devices (the same gloo group):

    prefill   the prompt, right-padded to `prefill_len` tokens, through the Plan the compiler
              chose for the whole sequence (hybrid parallelism, a pipeline, ...); each rank keeps
              the keys and values of its heads in its cache
    decode    one token per step through `decode`, a Plan over (some of) the same devices whose
              stages see one token: tensor parallelism over the prefill's head split (`keep`,
              the cache stays where it is), a pipeline of whole layers (`pipeline`) or one
              device (`single`); the last two first move the cache (the hand-off)

The decode plan's `devices` are the prefill plan's, so its ranks are the same processes; a rank
in no decode stage sits out the steps. Its seq_len is 1. `context_tokens` is the context the
decode step was priced at. `candidates` lists every decode layout the planner priced, the
chosen one first, so `galaxy-plan show` can say why it won.
"""
from __future__ import annotations

from dataclasses import dataclass

from galaxy.compiler.ir.plan import Plan

LAYOUTS = ("keep", "pipeline", "single")
LAYOUT_WORDS = {
    "keep": "tensor parallelism over the prefill's head split (the cache stays put)",
    "pipeline": "a pipeline of whole layers (the cache moves to each layer's device)",
    "single": "one device (the cache moves to it)",
}


def layout_words(layout: str, plan: Plan) -> str:
    """The layout in words. `keep` is what the prefill's stages make it: one device, a pipeline of
    whole layers (one device a stage), or tensor parallelism within stages."""
    if layout != "keep":
        return LAYOUT_WORDS[layout]
    if len(plan.stages) == 1 and len(plan.stages[0].ranks) == 1:
        return "the prefill's one device (the cache stays put)"
    if all(len(stage.ranks) == 1 for stage in plan.stages):
        return "the prefill's pipeline of whole layers (the cache stays put)"
    if len(plan.stages) > 1:
        return "the prefill's pipeline stages, tensor parallel within each (the cache stays put)"
    return LAYOUT_WORDS[layout]


def keep_name(plan: Plan) -> str:
    """What `keep` is for these stages, in two or three words (the planner's notes)."""
    return "tensor parallelism" if any(len(stage.ranks) > 1 for stage in plan.stages) else "the prefill's pipeline"


@dataclass(frozen=True)
class DecodeCandidate:
    """One decode layout the planner priced."""

    layout: str  # keep | pipeline | single
    devices: tuple[str, ...]  # the devices that run decode steps
    s_per_token: float  # predicted time between tokens
    handoff_s: float  # moving the cache from the prefill's layout, once per request
    fits: bool  # every device holds its weights and cache
    schedule: str  # the first decode stage's schedule, for the record
    why_not: str = ""  # when it does not fit: which device, by how much

    def to_json(self) -> dict:
        return {"layout": self.layout, "devices": list(self.devices), "s_per_token": self.s_per_token,
                "handoff_s": self.handoff_s, "fits": self.fits, "schedule": self.schedule,
                "why_not": self.why_not}

    @staticmethod
    def from_json(data: dict) -> "DecodeCandidate":
        return DecodeCandidate(data["layout"], tuple(data["devices"]), data["s_per_token"], data["handoff_s"],
                               data["fits"], data["schedule"], data.get("why_not", ""))


@dataclass(frozen=True)
class Generation:
    max_len: int  # tokens the cache holds: the prompt and every new token
    prefill_len: int  # the compiled prefill length: prompts are right-padded to it
    layout: str  # keep | pipeline | single (LAYOUTS)
    decode: Plan  # one token per step; devices == the prefill plan's
    predicted_ttft_s: float  # prefill + cache hand-off + the head of the first token
    predicted_tbt_s: float  # one decode step at `context_tokens`
    handoff_s: float  # the cache hand-off alone (0 for keep)
    context_tokens: int  # the context a decode step was priced at
    cache_bytes: tuple[int, ...] = ()  # each rank's key/value cache (max_len tokens), aligned with devices
    # The hand-off: (layer, sender rank, receiver rank, first group in the sender's prefill cache,
    # first group in the receiver's decode cache, KV groups) for every piece of the prompt's cache the
    # decode layout holds elsewhere (empty for keep); runtime.generate runs it.
    cache_moves: tuple[tuple[int, int, int, int, int, int], ...] = ()
    # The caches each rank allocates, per rank: (layer, KV groups) it runs in the prefill and in decode.
    prefill_caches: tuple[tuple[tuple[int, int], ...], ...] = ()
    decode_caches: tuple[tuple[tuple[int, int], ...], ...] = ()
    candidates: tuple[DecodeCandidate, ...] = ()
    notes: tuple[str, ...] = ()  # why this decode layout, in words
    eos_token_id: int | None = None
    vocab_size: int = 0

    def to_json(self) -> dict:
        return {"max_len": self.max_len, "prefill_len": self.prefill_len, "layout": self.layout,
                "decode": self.decode.to_json(), "predicted_ttft_s": self.predicted_ttft_s,
                "predicted_tbt_s": self.predicted_tbt_s, "handoff_s": self.handoff_s,
                "context_tokens": self.context_tokens, "cache_bytes": list(self.cache_bytes),
                "cache_moves": [list(m) for m in self.cache_moves],
                "prefill_caches": [[list(c) for c in rank] for rank in self.prefill_caches],
                "decode_caches": [[list(c) for c in rank] for rank in self.decode_caches],
                "candidates": [c.to_json() for c in self.candidates], "notes": list(self.notes),
                "eos_token_id": self.eos_token_id, "vocab_size": self.vocab_size}

    @staticmethod
    def from_json(data: dict) -> "Generation":
        return Generation(
            max_len=data["max_len"], prefill_len=data["prefill_len"], layout=data["layout"],
            decode=Plan.from_json(data["decode"]), predicted_ttft_s=data["predicted_ttft_s"],
            predicted_tbt_s=data["predicted_tbt_s"], handoff_s=data["handoff_s"],
            context_tokens=data["context_tokens"], cache_bytes=tuple(data.get("cache_bytes", ())),
            cache_moves=tuple(tuple(m) for m in data.get("cache_moves", ())),
            prefill_caches=tuple(tuple(tuple(c) for c in rank) for rank in data.get("prefill_caches", ())),
            decode_caches=tuple(tuple(tuple(c) for c in rank) for rank in data.get("decode_caches", ())),
            candidates=tuple(DecodeCandidate.from_json(c) for c in data.get("candidates", ())),
            notes=tuple(data.get("notes", ())), eos_token_id=data.get("eos_token_id"),
            vocab_size=data.get("vocab_size", 0))

    @property
    def decode_ranks(self) -> tuple[int, ...]:
        """The ranks that run decode steps, in stage order."""
        return tuple(r for stage in self.decode.stages for r in stage.ranks)
