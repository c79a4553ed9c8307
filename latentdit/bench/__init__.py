"""Benchmarks (``latentdit bench attention | model | sampler | dit | inception``): scripts that measure and write a
JSON with its provenance; they are not part of the training or sampling path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentdit.io import check_output_file
from latentdit.timing import interleaved_times, medians  # noqa: F401 (the benchmarks' timers)

def bench_parser(name: str, doc: str, *, quick_help: str,
                 out_help: str = "JSON file to write (a PNG goes beside it)") -> argparse.ArgumentParser:
    """The parser of ``latentdit bench NAME`` with the flags every benchmark has: ``--out`` (the JSON;
    a PNG goes beside it) and ``--quick`` (a smoke test); ``--threads`` comes with :func:`parse_bench_args`."""
    ap = argparse.ArgumentParser(prog=f"latentdit bench {name}", description=doc.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help=out_help)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    return ap


THREADS_HELP = "torch CPU threads (0 = torch's default); 1 is steadier on an oversubscribed machine"


def parse_bench_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Add ``--threads``, parse ``argv`` (default ``sys.argv[1:]``), check ``--out`` can be written and set
    the thread count; returns (args, the argument list, for the provenance record)."""
    import torch  # not at module level: `latentdit bench` starts without it

    ap.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    check_output_file(args.out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args, argv
