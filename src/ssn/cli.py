"""The ``ssn`` command line."""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__
from .models import available_backbones


def _info(args: argparse.Namespace) -> int:
    print(f"ssn {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"backbones: {', '.join(available_backbones())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssn",
        description="Stochastic Segmentation Networks: coherent samples of segmentations.",
        epilog="example: ssn info",
    )
    parser.add_argument("--version", action="version", version=f"ssn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="print versions, threads and the available backbones")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
