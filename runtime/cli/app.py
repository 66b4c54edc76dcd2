"""The ``stint`` command group, ``stint demo`` and ``stint serve``."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from . import ops

EPILOG = """\b
Exit codes: 0 ok, 1 the task waited for did not succeed, 2 usage
(or the node found the request invalid), 3 not found, 4 node
unreachable or not ready, 5 refused (token, conflict, size, queue full).
"""


def _positive(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value <= 0:
        raise click.BadParameter(f"{value} is not allowed: it must be a positive integer")
    return value


@click.group(
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80},
)
@click.version_option(__version__, prog_name="stint", message="%(prog)s %(version)s")
def cli() -> None:
    """stint: run the demo, serve a node, or operate one over its HTTP API."""


@cli.command()
@click.option(
    "--tasks",
    type=int,
    callback=_positive,
    default=3000,
    show_default=True,
    help="Roughly how many tasks.",
)
@click.option(
    "--seed", type=int, default=7, show_default=True, help="The same seed gives the same outcomes."
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="Event loop.",
)
def demo(tasks: int, seed: int, loop: str) -> int:
    """Run the embedded example and report every state."""
    from ..demo import run_demo
    from ..loop import run

    return run(run_demo(tasks=tasks, seed=seed), loop=loop)


@cli.command()
@click.argument("target")
@click.option(
    "--store",
    metavar="URL",
    help="Store URL (memory://, sqlite:///tasks.db, ...); "
    "also set as STINT_STORE for the target to read.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8800,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="N",
    help="Also serve Prometheus metrics on 127.0.0.1:N.",
)
@click.option(
    "--token",
    envvar="STINT_TOKEN",
    show_envvar=True,
    help="Require 'Authorization: Bearer TOKEN' on every route but /healthz.",
)
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text is key=value (logfmt).",
)
@click.option("--access-log", is_flag=True, help="Log one line per HTTP request.")
@click.option(
    "--loop",
    type=click.Choice(["auto", "uvloop", "asyncio"]),
    default="auto",
    show_default=True,
    help="Event loop.",
)
def serve(target: str, **options: Any) -> int:
    """Run a node: the runtime TARGET and its HTTP API and dashboard.

    TARGET is module:attribute, naming a Runtime that is built but not started,
    or a function that returns one; the module is imported with the current
    directory on the path. SIGINT/SIGTERM shut down gracefully; a second one cuts
    the wait short.
    """
    from ..service.server import ServeOptions
    from ..service.server import main as serve_main

    return serve_main(ServeOptions(target=target, **options))


ops.register(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        result = cli.main(args=argv, prog_name="stint", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
