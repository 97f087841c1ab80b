"""Rewrite the golden plans on purpose and print what changed (galaxy-plan diff of each).

    python -m tests.golden.update                 re-plan every case from its stored model summary
    python -m tests.golden.update --derive        re-derive the summaries from models/ first (slow)
    python -m tests.golden.update bert-base__home-3 ...   only these cases

Run from the repository root. Cases without a golden file derive their summary from the model.
"""
from __future__ import annotations

import argparse
import sys

from .golden_cases import CASES, update


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.update", description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--derive", action="store_true", help="re-derive model summaries by exporting the models")
    args = parser.parse_args(argv)
    known = {c.name: c for c in CASES}
    unknown = [n for n in args.cases if n not in known]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    print("\n".join(update([known[n] for n in args.cases] or CASES, derive_summaries=args.derive)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
