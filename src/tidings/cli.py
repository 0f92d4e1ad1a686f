"""The ``tidings`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``tidings`` command."""
    parser = argparse.ArgumentParser(
        prog="tidings",
        description="WebSocket toolkit and real-time messaging hub.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"tidings {__version__} (Python {sys.version.split()[0]}, "
        "pure-Python protocol core)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run a client and a server protocol engine against each other in memory",
    )
    demo.add_argument(
        "message",
        nargs="?",
        default="tidings: news, prices and chat lines the moment they happen",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tidings`` command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.message)
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
