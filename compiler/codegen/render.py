"""Render a RankProgram into the Python source of rank_<k>.py (Jinja), checked by ast.parse.

The body (functions and the `__main__` call) is rendered first; the header then imports exactly
the runtime functions the body calls and defines exactly the constants it reads, so a module
carries nothing unused whatever its schedule.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import re
import textwrap
from importlib import resources

import jinja2

from galaxy.compiler.ir.program import RankProgram
from galaxy.runtime.splits import offsets

DOC_WIDTH = 100  # docstrings wrap here
WIRE_TORCH = {"float32": "torch.float32", "float16": "torch.float16", "bfloat16": "torch.bfloat16"}
# Where generated code finds the runtime's functions (galaxy_runtime.<module> in a bundle).
RUNTIME_MODULES = ("bundle", "collectives", "direct", "entry", "online_attention", "overlap", "reduce", "splits",
                   "stream")


def _summarise(names) -> str:
    names = list(names)
    if len(names) <= 8:
        return ", ".join(names)
    return f"{', '.join(names[:4])}, ... {', '.join(names[-2:])} ({len(names)} nodes)"


def _docstring(text: str, indent: str = "    ") -> str:
    """A function's docstring wrapped to the width of the rest of the module."""
    lines = textwrap.wrap(text, DOC_WIDTH - len(indent))
    return f"\n{indent}".join(lines) + (f"\n{indent}" if len(lines) > 1 else "")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("galaxy.templates"))),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["summarise"] = _summarise
    env.filters["docstring"] = _docstring
    env.filters["static_ref"] = lambda name: f'static["{name}"]'
    env.globals["WIRE_TORCH"] = WIRE_TORCH
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


def _my_tokens(program: RankProgram) -> range:
    start = offsets(program.tokens_per_rank)[program.stage.ring_index]
    return range(start, start + program.tokens_per_rank[program.stage.ring_index])


def _share(program: RankProgram) -> str:
    """What this rank holds, in words, for the module docstring."""
    a, m, seq = program.attention, program.mlp, program.seq_len
    tokens = _my_tokens(program)
    token_text = (f"tokens {tokens.start}-{tokens.stop - 1} of {seq}" if len(tokens) else f"no tokens of {seq}")
    if program.schedule.layout == "whole":
        token_text = f"all {seq} tokens (connective blocks replicated)"
    if not program.schedule.shards_weights:
        return f"runs whole layers (all {a.total_heads} heads, all {m.total_columns} MLP columns) on {token_text}"
    heads = f"{a.heads} of {a.total_heads} attention heads" + (
        f" ({a.first_head}-{a.first_head + a.heads - 1})" if a.heads else "")
    columns = f"{m.columns} of {m.total_columns} MLP columns" + (
        f" ({m.first_column}-{m.first_column + m.columns - 1})" if m.columns else "")
    return f"runs {heads},\n{columns} and {token_text}"


def _constants(program: RankProgram) -> list[tuple[str, str, str]]:
    """Every constant a body may read: (name, value, comment)."""
    st = program.stage
    tokens = _my_tokens(program)
    stage = (str(st.index), f"of {st.count} pipeline stages; this one runs layers {_span(st.first_layer, st.end_layer - 1)}"
             if st.count > 1 else "")
    return [
        ("RANK", str(program.rank), ""),
        ("N_LAYERS", str(program.n_layers), ""),
        ("STAGE", *stage),
        ("BATCH", str(program.batch), ""),
        ("SEQ", str(program.seq_len), ""),
        ("HEAD_DIM", str(program.attention.head_dim), ""),
        ("TOKENS_PER_RANK", str(list(program.tokens_per_rank)), "tokens of every rank, in ring order: the collectives need all"),
        ("MY_TOKENS", f"slice({tokens.start}, {tokens.stop})", ""),
        ("QUERY_ROW_STATICS", str(program.query_row_statics),
         "masks and position tables, one row per query along this dim"),
    ]


def _names_used(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names read, names defined at module level or bound anywhere) in `tree`."""
    read, bound = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read, bound


def _imports(free: set[str]) -> list[tuple[str, list[str]]]:
    """(runtime module, names) for every free name a runtime module defines."""
    found: dict[str, list[str]] = {}
    for name in sorted(free):
        for module in RUNTIME_MODULES:
            if hasattr(importlib.import_module(f"galaxy.runtime.{module}"), name):
                found.setdefault(module, []).append(name)
                break
    return sorted(found.items())


def module_file(program: RankProgram) -> str:
    """The file a program is written to: rank_<k>.py, or decode_<k>.py for a decode step."""
    return f"{'decode' if program.phase == 'decode' else 'rank'}_{program.rank}.py"


def render_rank(program: RankProgram) -> str:
    env = _environment()
    stage = program.stage
    body = env.get_template("body.py.jinja").render(
        p=program,
        st=stage,
        after_attention_outputs=program.after_attention_outputs,
        mlp_input=program.mlp_input,
        tokens_phrase="this rank's tokens" if program.schedule.layout == "split" else "every token",
        layer_static="rows" if program.schedule.block("attn").shape == "sequence" else "static",
        sequence_mask=_sequence_mask(program),
        loop_layers=_loop_layers(program),
        layer_span=_span(stage.first_layer, stage.end_layer - 1),
        # Rank 0 of a pipeline: the head waits for the last stage, so start and finish are apart
        # (so that requests can stream; a generation bundle runs one request at a time).
        split_head=bool(program.epilogue) and stage.count > 1 and program.phase == "forward",
        head_receive=program.head_receive,
        send_tokens="TOKENS_PER_RANK" if program.schedule.layout == "split" else "None",
    )
    body = re.sub(r"\n{4,}", "\n\n\n", body)  # macros end in a newline of their own
    read, bound = _names_used(_parse(body, program.rank))
    free = read - bound - set(dir(builtins)) - {"torch", "F", "aten", "sys", "pathlib"}
    constants = [c for c in _constants(program) if c[0] in free]
    imports = _imports(free - {name for name, _, _ in constants})
    source = env.get_template("rank_module.py.jinja").render(
        p=program, body=body.rstrip("\n") + "\n", imports=imports, constants=constants,
        uses_aten="aten" in read, share=_share(program), module_name=module_file(program),
        layer_span=_span(stage.first_layer, stage.end_layer - 1))
    source = re.sub(r"\n{4,}", "\n\n\n", source)
    _parse(source, program.rank)
    return source


def _parse(source: str, rank: int) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:  # a template bug, never the user's fault
        raise RuntimeError(f"generated rank_{rank}.py does not parse: {exc}") from exc
