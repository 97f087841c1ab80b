"""Rewrite the golden plans and generated modules on purpose and print what changed (galaxy-plan
diff of each plan, the module files rewritten).

    python -m tests.golden.update                 re-plan every case from its stored model summary,
                                                  re-render every golden module
    python -m tests.golden.update --derive        re-derive the summaries from models/ first (slow)
    python -m tests.golden.update bert-base__home-3 llama-tiny__hybrid-3 ...   only these cases

Run from the repository root. Cases without a golden file derive their summary from the model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers (as under pytest)

from .golden_cases import CASES, update  # noqa: E402
from .module_cases import MODULE_CASES, update_modules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.update", description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--derive", action="store_true", help="re-derive model summaries by exporting the models")
    args = parser.parse_args(argv)
    known = {c.name: c for c in CASES}
    known_modules = {c.name: c for c in MODULE_CASES}
    unknown = [n for n in args.cases if n not in known and n not in known_modules]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join([*known, *known_modules])}")
    plans = [known[n] for n in args.cases if n in known] if args.cases else list(CASES)
    modules = [known_modules[n] for n in args.cases if n in known_modules] if args.cases else list(MODULE_CASES)
    print("\n".join(update(plans, derive_summaries=args.derive) + update_modules(modules)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
