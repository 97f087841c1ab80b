"""Render a RankProgram into the Python source of rank_<k>.py (Jinja), checked by ast.parse."""
from __future__ import annotations

import ast
import re
from importlib import resources

import jinja2

from galaxy.compiler.ir.program import RankProgram
from galaxy.runtime.splits import offsets

_WIRE_DTYPES = {"float32": None, "float16": "torch.float16", "bfloat16": "torch.bfloat16"}


def _summarise(names) -> str:
    names = list(names)
    if len(names) <= 8:
        return ", ".join(names)
    return f"{', '.join(names[:4])}, ... {', '.join(names[-2:])} ({len(names)} nodes)"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("galaxy.templates"))),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["summarise"] = _summarise
    return env


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _loop_layers(program: RankProgram) -> range | None:
    """Layers the loop runs; the model's last layer is written out after it (the head follows)."""
    stage = program.stage
    end = stage.end_layer - 1 if stage.is_last else stage.end_layer
    return range(stage.first_layer, end) if end > stage.first_layer else None


def _sequence_mask(program: RankProgram) -> str:
    """The attention mask of a rank that runs only its own queries (no tensor parallelism): a
    causal model needs it written out, since is_causal would align the rows to the first token.
    (SDPA takes a mask or is_causal, never both, so there is one or none.)"""
    if program.attention.is_causal:
        return 'static["causal"]'
    return f'static["{program.attention.mask}"]' if program.attention.mask else "None"


def render_rank(program: RankProgram) -> str:
    start = offsets(program.tokens_per_rank)[program.stage.ring_index]
    wire_dtype = _WIRE_DTYPES[program.wire_dtype]
    source = _environment().get_template("rank_module.py.jinja").render(
        p=program,
        my_tokens=range(start, start + program.tokens_per_rank[program.stage.ring_index]),
        wire_dtype=wire_dtype,
        wire_arg=", wire_dtype=WIRE_DTYPE" if wire_dtype else "",
        after_attention_outputs=program.after_attention_outputs,
        mlp_input=program.mlp_input,
        st=program.stage,
        tokens_phrase="this rank's tokens" if program.sequence_parallel else "every token",
        layer_static="static" if program.tensor_parallel else "rows",
        sequence_mask=_sequence_mask(program),
        loop_layers=_loop_layers(program),
        layer_span=_span(program.stage.first_layer, program.stage.end_layer - 1),
        # Rank 0 of a pipeline: the head waits for the last stage, so start and finish are apart.
        split_head=bool(program.epilogue) and program.stage.count > 1,
    )
    source = re.sub(r"\n{4,}", "\n\n\n", source)  # macros end in a newline of their own
    try:
        ast.parse(source)
    except SyntaxError as exc:  # a template bug, never the user's fault
        raise RuntimeError(f"generated rank_{program.rank}.py does not parse: {exc}") from exc
    return source
