"""`galaxy-plan diff`: what changed between two plans, in words and small tables.

Devices added or removed, each device's share (attention heads and KV heads, MLP columns,
connective tokens) and stage, schedules, stage boundaries, the predicted latency (absolute and %),
and the predicted time per block per forward. Informational: it never fails on a difference.
"""
from __future__ import annotations

from dataclasses import asdict

from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.report.document import PlanDocument
from galaxy.compiler.report.show import runs_per_forward
from galaxy.compiler.report.text import ms, ms_decimals, pct, signed_ms, table

SHARES = (("heads", "heads_per_rank"), ("kv heads", "kv_heads_per_rank"),
          ("columns", "columns_per_rank"), ("tokens", "tokens_per_rank"))


def diff_plans(old: PlanDocument, new: PlanDocument) -> str:
    a, b = old.plan, new.plan
    dec = ms_decimals(max(a.predicted_latency_s, b.predicted_latency_s))
    lines = [f"plan diff: {old.label} -> {new.label}"]
    lines += context_lines(old, new)
    delta = b.predicted_latency_s - a.predicted_latency_s
    lines.append(f"predicted latency: {ms(a.predicted_latency_s, dec)} ms -> {ms(b.predicted_latency_s, dec)} ms "
                 f"({signed_ms(delta, dec)} ms, {pct(b.predicted_latency_s, a.predicted_latency_s)})")
    if a == b:
        lines.append("the plans are identical")
        return "\n".join(lines)
    lines += device_lines(a, b) + stage_lines(a, b)
    lines += share_lines(a, b) + block_lines(a, b, dec) + note_lines(a, b)
    return "\n".join(lines)


def context_lines(old: PlanDocument, new: PlanDocument) -> list[str]:
    """Model, cluster, solver: what the two plans were made for and by."""
    a, b = old.plan, new.plan
    lines = [_change("model", _name(old.summary, a.model), _name(new.summary, b.model), _summary_diff(old, new)),
             _change("cluster", _name(old.cluster, a.cluster), _name(new.cluster, b.cluster), _cluster_diff(old, new))]
    for name in ("solver", "objective", "wire_dtype", "microbatches"):
        if getattr(a, name) != getattr(b, name):
            lines.append(f"{name.replace('_', ' ')}: {getattr(a, name)} -> {getattr(b, name)}")
    return lines


def _name(described, fallback: str) -> str:
    """The name in the document's summary or cluster, else the one the plan records."""
    return described.name if described is not None else fallback


def _change(what: str, old: str, new: str, detail: str) -> str:
    head = f"{what}: {old}" if old == new else f"{what}: {old} -> {new}"
    return f"{head} ({detail})" if detail else head


def _summary_diff(old: PlanDocument, new: PlanDocument) -> str:
    if old.summary is None or new.summary is None:
        return "summary unknown for a bare plan file"
    return differences(asdict(old.summary), asdict(new.summary)) or "same summary"


def _cluster_diff(old: PlanDocument, new: PlanDocument) -> str:
    if old.cluster is None or new.cluster is None:
        return "devices and links unknown for a bare plan file"
    return cluster_differences(old.cluster, new.cluster) or "same devices and links"


def cluster_differences(old: Cluster, new: Cluster, limit: int = 4) -> str:
    """'laptop added, tablet flops_per_s 4e10 -> 6e10, ...': devices by name, then links."""
    found = [f"{d} added" for d in new.names if d not in old.names]
    found += [f"{d} removed" for d in old.names if d not in new.names]
    for d in new.names:
        if d in old.names:
            found += [f"{d} {k} {o} -> {n}" for k, o, n in
                      _leaf_differences(asdict(old.device(d)), asdict(new.device(d)), "")]
    links = ["default_link", "link_overrides"]
    found += [f"{k} {o} -> {n}" for k, o, n in _leaf_differences(
        {k: v for k, v in old.to_json().items() if k in links},
        {k: v for k, v in new.to_json().items() if k in links}, "")]
    return ", ".join(found[:limit]) + (f" and {len(found) - limit} more" if len(found) > limit else "")


def differences(old: dict, new: dict, limit: int = 4) -> str:
    """'seq_len 256 -> 128, devices[1].flops_per_s ...': the first `limit` differing leaves."""
    found = [f"{k} {o} -> {n}" for k, o, n in _leaf_differences(old, new, "")]
    return ", ".join(found[:limit]) + (f" and {len(found) - limit} more" if len(found) > limit else "")


def _leaf_differences(old, new, where: str) -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _leaf_differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (o, n) in enumerate(zip(old, new)) for d in _leaf_differences(o, n, f"{where}[{i}]")]
    return [] if old == new else [(where, _short(old), _short(new))]


def _short(value) -> object:
    if isinstance(value, list):
        return f"[{len(value)} entries]"
    return f"{value:.6g}" if isinstance(value, float) else value


def device_lines(a: Plan, b: Plan) -> list[str]:
    added = [d for d in b.devices if d not in a.devices]
    removed = [d for d in a.devices if d not in b.devices]
    lines = []
    if added:
        lines.append("devices added: " + ", ".join(f"{d} (rank {b.devices.index(d)})" for d in added))
    if removed:
        lines.append("devices removed: " + ", ".join(f"{d} (was rank {a.devices.index(d)})" for d in removed))
    if not added and not removed and a.devices != b.devices:
        lines.append(f"rank order: {', '.join(a.devices)} -> {', '.join(b.devices)}")
    if not lines:
        lines.append(f"devices: same {len(a.devices)} ({', '.join(a.devices)})")
    return lines


def stage_lines(a: Plan, b: Plan) -> list[str]:
    def bounds(p: Plan) -> str:
        return " | ".join(f"{s.first_layer}-{s.end_layer - 1}" for s in p.stages)

    def schedules(p: Plan) -> str:
        return " || ".join(str(s.schedule) for s in p.stages)

    lines = []
    if bounds(a) != bounds(b):
        lines.append(f"stages: {len(a.stages)} -> {len(b.stages)}, layers {bounds(a)} -> {bounds(b)}")
    if schedules(a) != schedules(b):
        lines.append(f"schedule: {schedules(a)} -> {schedules(b)}")
    modes = ["; ".join(dict.fromkeys(s.parallelism for s in p.stages)) for p in (a, b)]
    if modes[0] != modes[1]:
        lines.append(f"parallelism: {modes[0]} -> {modes[1]}")
    return lines


def _shares(p: Plan) -> dict[str, dict[str, object]]:
    """Per device: its stage and its share of each block."""
    out = {}
    for i, s in enumerate(p.stages):
        for j, rank in enumerate(s.ranks):
            out[p.devices[rank]] = {"stage": i, **{label: getattr(s, f)[j] for label, f in SHARES}}
    return out


def share_lines(a: Plan, b: Plan) -> list[str]:
    old, new = _shares(a), _shares(b)
    names = [*b.devices, *(d for d in a.devices if d not in b.devices)]
    rows = []
    for name in names:
        o, n = old.get(name), new.get(name)
        if o == n:
            continue
        cells = [_cell(o and o[k], n and n[k]) for k in ("stage", *(label for label, _ in SHARES))]
        rows.append([name, *cells])
    if not rows:
        return ["shares: unchanged"]
    return (["shares changed (attention: heads, kv heads; mlp: columns; connective: tokens; old -> new):"]
            + table(["device", "stage", *(label for label, _ in SHARES)], rows, left=1))


def _cell(old, new) -> str:
    if old == new:
        return str(new)
    show = ["-" if v is None else str(v) for v in (old, new)]
    delta = f" ({new - old:+d})" if isinstance(old, int) and isinstance(new, int) else ""
    return f"{show[0]} -> {show[1]}{delta}"


def _block_times(p: Plan) -> dict[tuple[int, str], float]:
    return {(blk.stage, blk.block): block_s(blk) * runs_per_forward(p, blk) for blk in p.predicted_blocks}


def block_lines(a: Plan, b: Plan, dec: int) -> list[str]:
    old, new = _block_times(a), _block_times(b)
    keys = [*old, *(k for k in new if k not in old)]
    rows = []
    for key in keys:
        o, n = old.get(key), new.get(key)
        rows.append([str(key[0]), key[1], "-" if o is None else ms(o, dec), "-" if n is None else ms(n, dec),
                     signed_ms((n or 0.0) - (o or 0.0), dec), pct(n or 0.0, o) if o is not None else "new"])
    return (["predicted time per block per forward (ms):"]
            + table(["stage", "block", "old", "new", "delta", "change"], rows))


def note_lines(a: Plan, b: Plan) -> list[str]:
    """The planner's notes that are new (why devices are in or out now)."""
    added = [n for n in b.notes if n not in a.notes]
    return ["new planner notes:", *(f"  {n}" for n in added)] if added else []



