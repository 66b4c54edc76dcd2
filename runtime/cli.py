"""The ``stint`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .loop import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stint", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stint {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the embedded example and report every state")
    demo.add_argument("--tasks", type=_positive, default=3000, help="roughly how many tasks (3000)")
    demo.add_argument(
        "--seed", type=int, default=7, help="the same seed gives the same outcomes (7)"
    )
    demo.add_argument(
        "--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop (auto)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run(run_demo(tasks=args.tasks, seed=args.seed), loop=args.loop)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse exits first
    return 2  # pragma: no cover


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


if __name__ == "__main__":
    sys.exit(main())
