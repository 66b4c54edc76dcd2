"""How the CLI shows the API's documents on a terminal: rich tables that fit 80 columns."""

from __future__ import annotations

import json
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "Enqueued": "cyan",
    "Dequeued": "cyan",
    "Running": "bold blue",
    "Retrying": "yellow",
    "Stopping": "magenta",
    "Succeeded": "bold green",
    "Failed": "bold red",
    "Stopped": "magenta",
    "Expired": "red",
    "Invalid": "red",
}
INSTANCE_LABELS = (
    ("Starting", "starting"),
    ("Ready", "idle"),
    ("Busy", "busy"),
    ("Frozen", "frozen"),
    ("Stopping", "stopping"),
)


def status(text: str) -> Text:
    return Text(text, style=STATUS_STYLE.get(text, ""))


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d ", time.localtime(ts)) + clock(ts)


def ago(ts: float, now: float | None = None) -> str:
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h ago"
    return time.strftime("%Y-%m-%d", time.localtime(ts))


def span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def value(data: Any, limit: int = 400) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_table(tasks: list[dict[str, Any]]) -> Table:
    """``stint ls``: one row per task."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("TASK", no_wrap=True, overflow="ellipsis", max_width=30)
    table.add_column("FUNCTION", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("ATT", justify="right")
    table.add_column("CREATED", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    for task in tasks:
        took = None if task["ended_at"] is None else task["ended_at"] - task["created_at"]
        table.add_row(
            task["task_id"],
            task["function"],
            status(task["status"]),
            str(task["attempts"]),
            ago(task["created_at"]),
            span(took),
        )
    return table


def record_view(record: dict[str, Any]) -> Group:
    """``stint get``: the record's fields, then its timeline."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="dim", no_wrap=True)
    fields.add_column(overflow="fold")
    fields.add_row("task", Text(record["task_id"], style="bold"))
    fields.add_row("function", record["function"])
    fields.add_row("status", status(record["status"]))
    fields.add_row("attempts", f"{record['attempts']} ({record['retries']} retries)")
    fields.add_row("instance", record["instance_id"] or "-")
    fields.add_row("created", when(record["created_at"]))
    took = None if record["ended_at"] is None else record["ended_at"] - record["created_at"]
    fields.add_row("ended", f"{when(record['ended_at'])}  (took {span(took)})")
    fields.add_row("payload", value(record["payload"]))
    if record["status"] == "Succeeded":
        fields.add_row("result", value(record["result"]))
    if record["error"]:
        error = record["error"]
        fields.add_row("error", Text(f"{error['type']}: {error['message']}", style="red"))
    return Group(fields, Text(""), timeline(record["events"]))


def timeline(events: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=None)
    table.add_column("TIME", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("+", justify="right", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    previous = events[0]["timestamp"] if events else 0.0
    for event in events:
        table.add_row(*event_cells(event, previous))
        previous = event["timestamp"]
    return table


def event_cells(event: dict[str, Any], previous: float) -> tuple[str, Text, str, str]:
    return (
        clock(event["timestamp"]),
        status(event["status"]),
        span(event["timestamp"] - previous),
        event["detail"],
    )


def event_line(event: dict[str, Any], previous: float) -> Text:
    """``stint watch``: one transition per line."""
    at, state, delta, detail = event_cells(event, previous)
    line = Text(f"{at}  ")
    line.append(state.plain.ljust(10), style=state.style)
    line.append(f" {delta:>9}  {detail}")
    return line


def function_table(functions: list[dict[str, Any]]) -> Table:
    """``stint functions``: each function's kind, queue, running and instances."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("FUNCTION", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("KIND", no_wrap=True)
    table.add_column("QUEUED", justify="right")
    table.add_column("RUNNING", justify="right")
    table.add_column("INSTANCES", overflow="fold")
    for fn in functions:
        parts = [
            f"{fn['instances'].get(key, 0)} {label}"
            for key, label in INSTANCE_LABELS
            if fn["instances"].get(key, 0)
        ]
        table.add_row(
            fn["name"],
            fn["kind"],
            "-" if fn["queued"] is None else str(fn["queued"]),
            "-" if fn["running"] is None else str(fn["running"]),
            ", ".join(parts) or "none",
        )
    return table


def node_table(nodes: list[dict[str, Any]]) -> Table:
    """``stint nodes``: the first few fields of each node, whatever the store reports."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    keys = list(nodes[0])[:5] if nodes else ["node"]
    for key in keys:
        table.add_column(key.upper(), overflow="fold")
    for node in nodes:
        table.add_row(*(_cell(node.get(key)) for key in keys))
    return table


def _cell(data: Any) -> str:
    if isinstance(data, float) and data > 1e9:  # an epoch timestamp
        return ago(data)
    return data if isinstance(data, str) else value(data, 40)


def console(stderr: bool = False) -> Console:
    """A console that never goes past 80 columns (wider terminals get 80 too)."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=min(probe.width, 80))
