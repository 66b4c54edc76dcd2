"""The operations commands: clients of a node's HTTP API (``stint serve``).

With ``--json`` each prints exactly what the API returns (the record for
``get``, ``stop`` and ``invoke --wait``; the page for ``ls``; one JSON line per
event for ``watch``); otherwise rich tables that fit 80 columns.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click

from . import render
from .client import NOT_FOUND, OK, TASK_FAILED, UNREACHABLE, USAGE, Client, CliError

F = TypeVar("F", bound=Callable[..., Any])
TERMINAL = frozenset({"Succeeded", "Failed", "Stopped", "Expired", "Invalid"})


def client_options(command: F) -> F:
    """--url, --token and --json, and one Client for the command; errors become exit codes."""

    @click.option(
        "--url",
        envvar="STINT_URL",
        show_envvar=True,
        metavar="URL",
        help="The node [default: http://127.0.0.1:8800].",
    )
    @click.option("--token", envvar="STINT_TOKEN", show_envvar=True, help="The node's token.")
    @click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
    @functools.wraps(command)
    def wrapper(url: str | None, token: str | None, as_json: bool, **kwargs: Any) -> int:
        client = Client(url, token)
        try:
            result: int = command(client, as_json, **kwargs)
            return result
        except CliError as error:
            if as_json and error.problem is not None:
                click.echo(json.dumps(error.problem), err=True)
            else:
                render.console(stderr=True).print(f"[red]error:[/] {error}", highlight=False)
            return error.code
        finally:
            client.close()

    return wrapper  # type: ignore[return-value]


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def _task_path(task_id: str) -> str:
    return "/v1/tasks/" + quote(task_id, safe="")


@click.command()
@click.argument("name")
@click.argument("payload", required=False, metavar="[JSON|-]")
@click.option("--id", "task_id", metavar="ID", help="Your own task id.")
@click.option(
    "--delay", type=click.FloatRange(min=0), metavar="S", help="Seconds before the task may start."
)
@click.option("--wait", is_flag=True, help="Wait until the task ends; exit 1 unless it Succeeded.")
@client_options
def invoke(
    client: Client,
    as_json: bool,
    *,
    name: str,
    payload: str | None,
    task_id: str | None,
    delay: float | None,
    wait: bool,
) -> int:
    """Invoke function NAME with a JSON payload.

    PAYLOAD is JSON (- reads it from stdin). Prints the task id, or with
    --wait the finished task.
    """
    body: dict[str, Any] = {}
    if payload is not None:
        body["payload"] = _parse_payload(payload)
    if task_id is not None:
        body["task_id"] = task_id
    if delay is not None:
        body["delay"] = delay
    accepted = client.request(
        "POST", f"/v1/functions/{quote(name, safe='')}/invocations", json=body
    )
    if not wait:
        if as_json:
            _print_json(accepted)
        else:
            click.echo(accepted["task_id"])
        return OK
    record = _wait(client, accepted["task_id"])
    _show_record(record, as_json)
    return OK if record["status"] == "Succeeded" else TASK_FAILED


def _parse_payload(text: str) -> Any:
    source = sys.stdin.read() if text == "-" else text
    try:
        return json.loads(source)
    except ValueError as exc:
        raise click.UsageError(
            f"the payload is not valid JSON ({exc}); quote it for the shell, like "
            '\'{"name": "Ada"}\', or pass - to read it from stdin'
        ) from None


def _wait(client: Client, task_id: str) -> dict[str, Any]:
    """Follow the task's events until it ends (resuming if the stream is cut); its record."""
    last = 0
    for _ in range(5):
        for kind, data, event_id in client.events(task_id, after=last):
            last = max(last, event_id)
            if kind == "end":
                record: dict[str, Any] = client.request("GET", _task_path(task_id))
                return record
            if kind == "error":
                raise CliError(f"{data.get('type')}: {data.get('detail')}", UNREACHABLE, data)
    raise CliError(f"the node kept closing the event stream of {task_id}", UNREACHABLE)


def _show_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(record)
    else:
        render.console().print(render.record_view(record))


@click.command()
@click.argument("task_id", metavar="ID")
@client_options
def get(client: Client, as_json: bool, task_id: str) -> int:
    """Show task ID: its fields and its timeline."""
    _show_record(client.request("GET", _task_path(task_id)), as_json)
    return OK


@click.command(name="ls")
@click.option("--function", "-f", metavar="F", help="Only tasks of function F.")
@click.option("--status", "-s", metavar="S", help="Only tasks in state S (Running, Failed...).")
@click.option("--prefix", "-p", metavar="P", help="Only task ids starting with P.")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--cursor", metavar="C", help="The next page (printed under the table).")
@client_options
def list_tasks(
    client: Client,
    as_json: bool,
    *,
    function: str | None,
    status: str | None,
    prefix: str | None,
    limit: int,
    cursor: str | None,
) -> int:
    """List tasks, newest first."""
    params = {
        "function": function,
        "status": status,
        "prefix": prefix,
        "limit": limit,
        "cursor": cursor,
    }
    page = client.request("GET", "/v1/tasks", params={k: v for k, v in params.items() if v})
    if as_json:
        _print_json(page)
        return OK
    out = render.console()
    if not page["tasks"]:
        out.print("no tasks match", style="dim")
        return OK
    out.print(render.task_table(page["tasks"]))
    if page.get("next_cursor"):
        out.print(f"more: stint ls --cursor {page['next_cursor']}", style="dim", highlight=False)
    return OK


@click.command()
@click.argument("task_id", metavar="ID")
@client_options
def stop(client: Client, as_json: bool, task_id: str) -> int:
    """Stop task ID (Stopped, or Stopping while its PreStop runs)."""
    _show_record(client.request("POST", _task_path(task_id) + "/stop"), as_json)
    return OK


@click.command()
@click.argument("task_id", metavar="ID")
@client_options
def watch(client: Client, as_json: bool, task_id: str) -> int:
    """Print task ID's transitions as they happen, until it ends.

    Exits 1 unless it ends Succeeded.
    """
    out = render.console()
    last, previous, final = 0, None, None
    for _ in range(5):
        for kind, data, event_id in client.events(task_id, after=last):
            if kind == "transition":
                last = max(last, event_id)
                if as_json:
                    click.echo(json.dumps(data))
                else:
                    out.print(render.event_line(data, previous or data["timestamp"]))
                previous, final = data["timestamp"], data["status"]
            elif kind == "end":
                return OK if final == "Succeeded" else TASK_FAILED
            elif kind == "error":
                raise CliError(f"{data.get('type')}: {data.get('detail')}", UNREACHABLE, data)
    raise CliError(f"the node kept closing the event stream of {task_id}", UNREACHABLE)


@click.command()
@client_options
def functions(client: Client, as_json: bool) -> int:
    """List functions: kind, queue, running, instances."""
    document = client.request("GET", "/v1/functions")
    if as_json:
        _print_json(document)
    elif not document["functions"]:
        render.console().print("no functions registered", style="dim")
    else:
        render.console().print(render.function_table(document["functions"]))
    return OK


@click.command()
@client_options
def nodes(client: Client, as_json: bool) -> int:
    """List the nodes that share this node's store (redis)."""
    document = client.request("GET", "/v1/nodes")
    if as_json:
        _print_json(document)
    else:
        render.console().print(render.node_table(document["nodes"]))
    return OK


def register(group: click.Group) -> None:
    for command in (invoke, get, list_tasks, stop, watch, functions, nodes):
        group.add_command(command)


__all__ = ["NOT_FOUND", "USAGE", "register"]
