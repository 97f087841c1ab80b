"""The schedule: which communication runs at which block border of a pipeline stage. Plain data.

Every rank of a stage runs the same program shape: take the layer inputs (`enter`), run each
layer's blocks with the actions at their borders (`layer`), hand the result on (`exit`). The
planner chooses the schedule once; the cost model charges each action with the one cost
function of its kind (cost/actions.py) and codegen emits it with the one template macro of its
kind (templates/actions.py.jinja), both walking this same list.

Vocabulary (`op`), and where each runs:

    enter   SCATTER  rank 0 computes the layer inputs (embeddings) and sends each rank its tokens
            REP      every rank computes the layer inputs itself, whole (replicated prologue)
            BCAST    rank 0 computes the layer inputs and sends them whole to every rank of its
                     stage (a decode step's one token: only rank 0 holds the embeddings)
            RECV     the previous stage's leader sends the hidden states whole; each rank keeps
                     what its layout needs (its tokens, or all of them)
    layer   blocks   attn then mlp, or one par block: attention and MLP side by side on the same
                     gathered input, their partial sums added on each rank and reduced once
                     (GPT-J, NeoX, Phi: 2 collectives a layer instead of 4)
            AG       all-gather tokens before the block's first GEMM (its input is token-split)
            RS       reduce-scatter the block's partial sums by tokens after its last GEMM
            AR       all-reduce the block's partial sums (the hidden stream stays whole: Megatron);
                     its algorithm is `ring` (reduce-scatter then all-gather: 2 (n - 1) messages
                     in a row, each 1/n of the bytes), `star` (to the stage's leader and back:
                     2 messages in a row, the leader's link carries all) or `direct` (every rank
                     sends its partial to every other: 1 message in a row, n - 1 of them on
                     each link), chosen by message size and link latency (cost/actions.py)
            KVAG     keys and values all-gathered after they are projected, tile by tile
                     (sequence parallelism only: every rank holds every weight)
            KVATT    keys and values exchanged while the rank attends to them block by block as
                     they arrive, its own first, merged by an online softmax (ring attention;
                     sequence parallelism only, no tiles; ring or direct exchange)
            (none)   the block runs locally, printed "-"
    exit    GATHER   the head's inputs gathered to rank 0 by tokens
            SEND     the leader gathers the hidden states and sends them whole to the next stage
                     (the last stage: the head's inputs to rank 0)
            (none)   rank 0 already holds what the head reads, printed "-"

An action's options are its tile count, the dtype of what travels on the wire, and the
collective's algorithm (ring: chunks forwarded round the ranks; direct: every rank sends its chunk
to every peer at once). Tiles say how AG and RS overlap the GEMM next to them: t pieces of every
rank's chunk, each computed on while later pieces move (t1, the default: a rank's own chunk is
computed on while the others' are in flight); t0 runs the plain collective, then the GEMM. For
KVAG, tiles are how many pieces keys and values are projected and sent in (t >= 1). The string
form round-trips:

    SCATTER | attn:AG(t2)>RS(t2) mlp:AG>RS | GATHER         hybrid parallelism, 2 tiles
    SCATTER | attn:AG(direct)>RS(direct) mlp:AG(t0)>RS(t0) | GATHER   direct collectives; no overlap
    REP | attn:AR mlp:AR | -                                 Megatron-style tensor parallelism
    SCATTER | attn:KVAG(t2,f16) mlp:- | GATHER               sequence parallelism only, fp16 wire
    SCATTER | attn:KVATT(direct) mlp:- | GATHER              ... attending as keys and values arrive
    REP | attn:- mlp:- | -                                   one device
    RECV | attn:AG>RS mlp:AG>RS | SEND                       a later pipeline stage
    SCATTER | par:AG(t2)>RS(t2) | GATHER                     parallel attention/MLP blocks
    BCAST | attn:AR(direct) mlp:AR(direct) | -               a decode step, tensor parallel
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from galaxy.compiler.errors import PlanFileError

ENTER_OPS = ("SCATTER", "REP", "BCAST", "RECV")
LAYER_OPS = ("AG", "RS", "AR", "KVAG", "KVATT")
KEY_VALUE_OPS = ("KVAG", "KVATT")  # the actions of sequence parallelism only
EXIT_OPS = ("GATHER", "SEND")
BLOCKS = ("attn", "mlp")  # a layer's tensor-parallel blocks, in order
PARALLEL_BLOCKS = ("par",)  # ... or one block running both side by side
WIRE_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}  # dtype -> short form
WIRE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ALGORITHMS = ("ring", "direct", "star")
OVERLAPPING_OPS = ("AG", "RS")  # fused with their GEMM unless tiles = 0
# The actions a block may carry, in order (the layouts Galaxy generates code for).
BLOCK_SHAPES = {(): "local", ("AG", "RS"): "hybrid", ("AR",): "tensor", ("KVAG",): "sequence", ("KVATT",): "sequence"}


def gather_can_overlap(parallel_block_inputs: int) -> bool:
    """Whether a block's all-gather may fuse with the GEMM after it (tiles >= 1). Not for a
    parallel block whose attention and MLP read different inputs (ModelSummary.parallel_block_inputs
    2): its all-gather carries both and feeds two GEMMs, so it runs plainly (tiles 0). The planner,
    lowering and hand-written test plans all ask this one question."""
    return parallel_block_inputs <= 1


@dataclass(frozen=True)
class Action:
    """One communication step: `op` with its tile count, wire dtype and algorithm."""

    op: str
    tiles: int = 1
    wire: str = "float32"
    algorithm: str = "ring"

    def __post_init__(self) -> None:
        if self.op not in ENTER_OPS + LAYER_OPS + EXIT_OPS:
            raise PlanFileError(f"unknown schedule action {self.op!r}; expected one of "
                                f"{', '.join(ENTER_OPS + LAYER_OPS + EXIT_OPS)}")
        if self.tiles < (0 if self.op in OVERLAPPING_OPS else 1):
            floor = "0 (no overlap)" if self.op in OVERLAPPING_OPS else "1"
            raise PlanFileError(f"action {self.op}: tiles must be >= {floor}, not {self.tiles}")
        if self.op == "KVATT" and self.tiles != 1:
            raise PlanFileError(f"action {self.op}: keys and values are attended block by block as they arrive, "
                                f"not in tiles (t{self.tiles}); use KVAG(t{self.tiles}) to tile the projection")
        if self.algorithm == "direct" and self.tiles > 1:
            raise PlanFileError(f"action {self}: a direct collective sends whole chunks; use tiles 0 or 1 "
                                "(or the ring algorithm to tile)")
        if self.wire not in WIRE_DTYPES:
            raise PlanFileError(f"action {self.op}: wire dtype {self.wire!r} is not one of {', '.join(WIRE_DTYPES)}")
        if self.algorithm not in ALGORITHMS:
            raise PlanFileError(f"action {self.op}: algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")

    def __str__(self) -> str:
        options = [f"t{self.tiles}"] if self.tiles != 1 else []
        options += [WIRE_DTYPES[self.wire]] if self.wire != "float32" else []
        options += [self.algorithm] if self.algorithm != "ring" else []
        return f"{self.op}({','.join(options)})" if options else self.op

    @staticmethod
    def parse(text: str) -> "Action":
        match = re.fullmatch(r"([A-Z]+)(?:\(([^()]*)\))?", text.strip())
        if not match:
            raise PlanFileError(f"cannot read schedule action {text!r}; expected e.g. AG, RS(t2) or KVAG(t2,f16)")
        op, options = match.group(1), match.group(2)
        fields: dict = {}
        short_to_wire = {short: name for name, short in WIRE_DTYPES.items()}
        for option in filter(None, (o.strip() for o in (options or "").split(","))):
            if re.fullmatch(r"t\d+", option):
                fields["tiles"] = int(option[1:])
            elif option in short_to_wire:
                fields["wire"] = short_to_wire[option]
            elif option in ALGORITHMS:
                fields["algorithm"] = option
            else:
                raise PlanFileError(f"schedule action {text!r}: unknown option {option!r} (tN tiles, "
                                    f"{'/'.join(short_to_wire)} wire dtype, {'/'.join(ALGORITHMS)})")
        return Action(op, **fields)


@dataclass(frozen=True)
class BlockSchedule:
    """The actions at the borders of one tensor-parallel block kind, in the order they run."""

    block: str  # attn | mlp
    actions: tuple[Action, ...] = ()

    @property
    def shape(self) -> str:
        """local | hybrid | tensor | sequence (BLOCK_SHAPES)."""
        return BLOCK_SHAPES[tuple(a.op for a in self.actions)]

    def find(self, op: str) -> Action | None:
        return next((a for a in self.actions if a.op == op), None)

    def __str__(self) -> str:
        return f"{self.block}:{'>'.join(str(a) for a in self.actions) or '-'}"

    @staticmethod
    def parse(text: str) -> "BlockSchedule":
        block, sep, rest = text.partition(":")
        if not sep or block not in BLOCKS + PARALLEL_BLOCKS:
            raise PlanFileError(f"cannot read block schedule {text!r}; expected e.g. attn:AG>RS, mlp:- or par:AG>RS")
        actions = () if rest.strip() == "-" else tuple(Action.parse(a) for a in rest.split(">"))
        schedule = BlockSchedule(block, actions)
        if tuple(a.op for a in actions) not in BLOCK_SHAPES:
            raise PlanFileError(f"block schedule {text!r}: a block carries AG>RS, AR, KVAG, KVATT or nothing (-)")
        if block == "mlp" and schedule.shape == "sequence":
            raise PlanFileError(f"block schedule {text!r}: {actions[0].op} moves keys and values, so only attention has it")
        return schedule


@dataclass(frozen=True)
class StageSchedule:
    """How a stage enters, runs each of its layers, and exits."""

    enter: Action | None
    layer: tuple[BlockSchedule, ...]
    exit: Action | None

    def block(self, name: str) -> BlockSchedule:
        """The block `name` runs in: attn or mlp (in a parallel layer, both run in the par block)."""
        if self.parallel and name in BLOCKS:
            name = PARALLEL_BLOCKS[0]
        return next(b for b in self.layer if b.block == name)

    @property
    def parallel(self) -> bool:
        """True when attention and MLP run side by side in one block."""
        return tuple(b.block for b in self.layer) == PARALLEL_BLOCKS

    @property
    def layout(self) -> str:
        """How the hidden stream is held between blocks: `split` by tokens, or `whole` on every rank."""
        shapes = {b.shape for b in self.layer}
        return "whole" if shapes <= {"tensor", "local"} and "tensor" in shapes else "split"

    @property
    def shards_weights(self) -> bool:
        """False when every rank holds every weight (sequence parallelism only, or one rank)."""
        return any(b.shape in ("hybrid", "tensor") for b in self.layer)

    @property
    def actions(self) -> tuple[Action, ...]:
        """Every action, in the order a rank runs them for a one-layer stage."""
        return (*(() if self.enter is None else (self.enter,)),
                *(a for b in self.layer for a in b.actions), *(() if self.exit is None else (self.exit,)))

    @property
    def tiles(self) -> int:
        """The most tiles any layer action overlaps its transfers with (0: nothing overlaps)."""
        return max((a.tiles for b in self.layer for a in b.actions if a.op != "AR"), default=0)

    @property
    def parallelism(self) -> str:
        """How the stage shares a layer, in words."""
        shapes = {b.shape for b in self.layer}
        side_by_side = "; attention and MLP side by side, reduced once" if self.parallel else ""
        if shapes == {"local"}:
            return "one device: no collectives"
        if "sequence" in shapes and any(a.op == "KVATT" for b in self.layer for a in b.actions):
            return "sequence parallelism only (every weight on every rank, keys and values attended as they arrive)"
        if "sequence" in shapes:
            return "sequence parallelism only (every weight on every rank, keys and values all-gathered)"
        if self.layout == "whole":
            return f"tensor parallelism, replicated connective blocks (Megatron-style, all-reduce{side_by_side})"
        return f"hybrid: tensor-parallel attention and MLP, sequence-parallel connective blocks{side_by_side}"

    def __str__(self) -> str:
        enter = str(self.enter) if self.enter else "-"
        exit_ = str(self.exit) if self.exit else "-"
        return f"{enter} | {' '.join(str(b) for b in self.layer)} | {exit_}"

    @staticmethod
    def parse(text: str) -> "StageSchedule":
        parts = [p.strip() for p in text.split("|")]
        if len(parts) != 3:
            raise PlanFileError(f"cannot read stage schedule {text!r}; expected 'ENTER | BLOCKS | EXIT', "
                                "e.g. 'SCATTER | attn:AG>RS mlp:AG>RS | GATHER'")
        enter = None if parts[0] == "-" else Action.parse(parts[0])
        exit_ = None if parts[2] == "-" else Action.parse(parts[2])
        layer = tuple(BlockSchedule.parse(b) for b in parts[1].split())
        if enter is not None and enter.op not in ENTER_OPS:
            raise PlanFileError(f"stage schedule {text!r}: a stage enters with {', '.join(ENTER_OPS)}, not {enter.op}")
        if exit_ is not None and exit_.op not in EXIT_OPS:
            raise PlanFileError(f"stage schedule {text!r}: a stage exits with {', '.join(EXIT_OPS)} or -, not {exit_.op}")
        if tuple(b.block for b in layer) not in (BLOCKS, PARALLEL_BLOCKS):
            raise PlanFileError(f"stage schedule {text!r}: a layer lists {' and '.join(BLOCKS)}, in that order, "
                                f"or {PARALLEL_BLOCKS[0]} alone")
        if enter is None:
            raise PlanFileError(f"stage schedule {text!r}: a stage needs an enter action ({', '.join(ENTER_OPS)})")
        return StageSchedule(enter, layer, exit_)


def stage_schedule(ranks: int, *, shape: str = "hybrid", tiles: int = 1, wire: str = "float32",
                   first: bool = True, last: bool = True, algorithm: str = "ring",
                   parallel: bool = False, key_values: str = "KVAG", broadcast: bool = False,
                   reduce_algorithm: str | None = None) -> StageSchedule:
    """The schedule of a stage of `ranks` ranks whose blocks run as `shape` (hybrid | tensor |
    sequence): the one place a parallel layout becomes actions. One rank runs everything locally;
    `first`/`last` place the stage in a pipeline (the first stage holds rank 0); `parallel` runs
    attention and MLP side by side in one block (a model with parallel blocks); `key_values` is the
    sequence shape's attention action (KEY_VALUE_OPS: gather, or attend as they arrive). A first
    `tensor` stage enters with REP (every rank embeds), or with `broadcast` BCAST (rank 0 embeds and
    sends the hidden stream: a decode step); `reduce_algorithm` is its all-reduces' algorithm."""
    def action(op: str, tiles_: int = 1) -> Action:
        return Action(op, tiles_, wire, algorithm if op in OVERLAPPING_OPS + ("KVATT",) else "ring")

    local = ranks == 1
    whole = shape == "tensor"
    if local:
        blocks = (BlockSchedule("attn"), BlockSchedule("mlp"))
    elif shape == "hybrid":
        blocks = tuple(BlockSchedule(b, (action("AG", tiles), action("RS", tiles))) for b in BLOCKS)
    elif shape == "tensor":
        reduce = Action("AR", 1, wire, reduce_algorithm or "ring")
        blocks = tuple(BlockSchedule(b, (reduce,)) for b in BLOCKS)
    elif shape == "sequence":
        if key_values not in KEY_VALUE_OPS:
            raise ValueError(f"unknown key/value action {key_values!r}; expected one of {', '.join(KEY_VALUE_OPS)}")
        # keys and values are projected in at least one piece (tiles 0 and 1 alike: no overlap)
        blocks = (BlockSchedule("attn", (action(key_values, max(tiles, 1)),)), BlockSchedule("mlp"))
    else:
        raise ValueError(f"unknown stage shape {shape!r}; expected hybrid, tensor or sequence")
    if parallel:  # the actions of the attention block serve both
        blocks = (BlockSchedule(PARALLEL_BLOCKS[0], blocks[0].actions),)
    if not first:
        enter = action("RECV")
    else:
        enter = Action("REP") if local or (whole and not broadcast) else action("BCAST") if whole else action("SCATTER")
    if not (first and last):
        exit_ = action("SEND")
    else:
        exit_ = None if local or whole else action("GATHER")
    return StageSchedule(enter, blocks, exit_)
