"""galaxy-profile: measure this device (or a link) for the cost model. Parsing and printing only.

    galaxy-profile [-o PROFILE.json] [--model MODEL [--size S]] [--seq-len N]
                   [--hidden H --heads N --intermediate I] [--threads N] [--quick]
    galaxy-profile --link HOST:PORT --rank 0|1 [-o LINK.json] [--quick]     one end of a link
    galaxy-profile --link-local [-o LINK.json] [--quick]                    both ends, loopback

Exit codes: 0 success, 2 with a one-line cause on stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys

from galaxy.compiler.errors import GalaxyError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torch", "transformers", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.link or args.link_local:
            return _link(args)
        return _device(args)
    except GalaxyError as exc:
        print(f"galaxy-profile: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="galaxy-profile", description=(
        "Measure this device's GEMM, attention, elementwise and communication-CPU rates and write a "
        "profile JSON for the cluster TOML (profile = \"x.json\"); or measure a link's alpha/beta."))
    p.add_argument("-o", "--output", help="JSON to write (default: profile.json, or link.json with --link*)")
    p.add_argument("--quick", action="store_true", help="few repeats and small messages: a smoke test, "
                                                        "not figures to plan with")
    p.add_argument("--threads", type=_positive_int, help="torch intra-op threads (default: torch's, "
                                                         "i.e. what a rank module uses without --threads)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds any communication step may take")
    p.add_argument("-v", "--verbose", action="store_true")
    shapes = p.add_argument_group("shapes (default: BERT-base, 256 tokens)")
    shapes.add_argument("--model", help="measure at this model's layer shapes (model.py, HF config.json "
                                        "or checkpoint folder; captured like galaxy-compile does)")
    shapes.add_argument("--size", help="size knob of a model.py")
    shapes.add_argument("--seq-len", type=_positive_int, help="tokens (GEMM rows, attention length)")
    shapes.add_argument("--hidden", type=_positive_int)
    shapes.add_argument("--heads", type=_positive_int, help="attention heads (head_dim = hidden / heads)")
    shapes.add_argument("--intermediate", type=_positive_int, help="MLP intermediate size")
    link = p.add_argument_group("link probe")
    link.add_argument("--link", metavar="HOST:PORT", help="run one end of a link probe; rank 0 serves "
                                                          "HOST:PORT, rank 1 connects to it")
    link.add_argument("--rank", type=int, choices=(0, 1), help="which end (with --link)")
    link.add_argument("--link-local", action="store_true", help="run both ends on this machine over "
                                                                "loopback (a self-check)")
    return p


def _device(args: argparse.Namespace) -> int:
    from galaxy.compiler.profile import device, link, report

    shapes = _shapes(args)
    rates = device.measure_device(shapes, device.QUICK if args.quick else device.FULL, args.threads)
    logging.getLogger("galaxy.compiler.profile").info("measuring comm CPU: two local gloo processes")
    comm = link.run_local_pair(link.QUICK if args.quick else link.FULL, args.timeout)
    document = report.device_profile(rates, comm)
    path = report.write_json(args.output or "profile.json", document)
    print(report.profile_table(rates, comm, document))
    print(f"\nprofile written to {path}\n")
    print(report.device_toml(document, path.name))
    return 0


def _shapes(args: argparse.Namespace):
    from galaxy.compiler.profile.device import Shapes, shapes_from_model

    if args.model:
        given = [f"--{k}" for k in ("hidden", "heads", "intermediate") if getattr(args, k)]
        if given:
            raise GalaxyError(f"{', '.join(given)} cannot be combined with --model, which fixes the shapes")
        return shapes_from_model(args.model, args.size, args.seq_len)
    if args.size:
        raise GalaxyError("--size applies only with --model")
    base = Shapes()
    hidden = args.hidden or base.hidden
    heads = args.heads or base.heads
    if hidden % heads:
        raise GalaxyError(f"--hidden {hidden} is not a multiple of --heads {heads}")
    custom = any((args.hidden, args.heads, args.intermediate, args.seq_len))
    seq_len = args.seq_len or base.seq_len
    return Shapes(source=f"hidden {hidden}, {heads} heads, {seq_len} tokens" if custom else base.source,
                  seq_len=seq_len, hidden=hidden, heads=heads, kv_heads=heads, head_dim=hidden // heads,
                  intermediate=args.intermediate or base.intermediate)


def _link(args: argparse.Namespace) -> int:
    from galaxy.compiler.profile import link, report

    config = link.QUICK if args.quick else link.FULL
    if args.link_local:
        if args.link:
            raise GalaxyError("give either --link HOST:PORT --rank R or --link-local, not both")
        result = link.run_local_pair(config, args.timeout)
    else:
        if args.rank is None:
            raise GalaxyError("--link needs --rank 0 (serves HOST:PORT) or --rank 1 (connects to it)")
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        result = link.run_link_rank(args.link, args.rank, config, args.timeout)
        if result is None:  # rank 1: rank 0 reports
            print("rank 1 done; rank 0 prints and writes the result")
            return 0
    path = report.write_json(args.output or "link.json", report.link_document(result))
    print(report.link_table(result))
    print(f"\nlink written to {path}\n")
    print(report.link_toml(result))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
