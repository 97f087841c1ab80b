"""How fast an emulated device under a CPU quota runs work that comes in bursts with idle gaps
between them (a decode step's few layers) against the same bursts on an unthrottled core.

    python -m benchmarks.quota_bursts [--share 0.3] [--out benchmarks/results/quota-bursts]   (root)

A CFS quota is a budget of CPU time per period (host/emulate.py: 10 ms). A burst shorter than
the budget left in the period runs at full speed and the device then idles; only bursts longer
than the budget are throttled down to the share. A real slow board runs every burst slowly, so
on the emulator a device that does little per step (a few layers of a decode pipeline) looks
faster than its share, which the cost model does not expect.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.output import finish, parser, save_rows, start
from galaxy.host.emulate import EmulatedCluster

# Spin a fixed number of loops (the burst), sleep (the gap), for 3 s; print the median burst time.
BURSTS = textwrap.dedent("""
    import statistics, sys, time
    loops, gap_s = int(sys.argv[1]), float(sys.argv[2])
    walls, end = [], time.perf_counter() + 3.0
    while time.perf_counter() < end:
        started, n = time.perf_counter(), 0
        while n < loops:
            n += 1
        walls.append(time.perf_counter() - started)
        time.sleep(gap_s)
    print(statistics.median(walls))
""")
LOOPS_PER_MS = textwrap.dedent("""
    import time
    started, n = time.perf_counter(), 0
    while n < 5_000_000:
        n += 1
    print(5_000_000 / ((time.perf_counter() - started) * 1e3))
""")
SETTINGS = [(1, 10), (2, 10), (4, 10), (8, 10), (20, 40), (100, 200)]  # (burst ms at full speed, gap ms)


def _run(command: list[str]) -> float:
    return float(subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout)


def main(argv=None) -> int:
    args_parser = parser("benchmarks.quota_bursts", __doc__)
    args_parser.add_argument("--share", type=float, default=0.3, help="the throttled device's CPU share")
    args_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quota-bursts"))
    args = args_parser.parse_args(argv)
    start(args.out)
    per_ms = statistics.median(_run([sys.executable, "-c", LOOPS_PER_MS]) for _ in range(3))
    rows = []
    with EmulatedCluster([0.9, args.share, args.share], cpu_mode="quota") as emu:
        for burst_ms, gap_ms in SETTINGS:
            command = [sys.executable, "-c", BURSTS, str(int(burst_ms * per_ms)), str(gap_ms / 1e3)]
            free = _run(command)
            throttled = _run(emu.wrap_command(1, command))
            rows.append({"burst_ms": burst_ms, "gap_ms": gap_ms, "share": args.share, "unthrottled_s": free,
                         "throttled_s": throttled, "speed": free / throttled})
            save_rows(args.out, rows)
    lines = [f"# Bursts of work under a CPU quota of {args.share:g} (10 ms period)", "",
             "Command: `python -m benchmarks.quota_bursts` (root, 2 cores). Speed = a burst's median time "
             "on an unthrottled process / on the emulated device (3 s of bursts each).", "",
             "| burst (ms at full speed) | idle gap (ms) | unthrottled ms | on the device ms | speed |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['burst_ms']} | {r['gap_ms']} | {1e3 * r['unthrottled_s']:.2f} | {1e3 * r['throttled_s']:.2f} "
              f"| {r['speed']:.2f} |" for r in rows]
    return finish(args.out, rows, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
