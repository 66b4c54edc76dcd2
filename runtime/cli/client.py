"""The operations CLI's side of the HTTP API: requests, Server-Sent Events, exit codes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8800"

# Exit codes: what a script can rely on.
OK = 0
TASK_FAILED = 1  # waited for a task that ended other than Succeeded
USAGE = 2  # bad arguments, or the API found what was sent invalid (415, 422)
NOT_FOUND = 3  # no such task or function (404)
UNREACHABLE = 4  # no answer from the node, or it is not ready (503)
REFUSED = 5  # the node refused: token (401), conflict (409), size (413), queue full (429)


class CliError(Exception):
    """A failure to report on stderr, with the exit code that says what kind it was."""

    def __init__(self, message: str, code: int, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.problem = problem


def exit_code_for(status: int) -> int:
    if status == 404:
        return NOT_FOUND
    if status in (415, 422):
        return USAGE
    if status in (502, 503, 504):
        return UNREACHABLE
    return REFUSED


class Client:
    """A small synchronous client of one node's ``/v1`` API."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("STINT_URL") or DEFAULT_URL).rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "stint-cli"}
        token = token or os.environ.get("STINT_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # a stop waits for PreStop; an event stream sends a heartbeat every 15 s
        timeout = httpx.Timeout(10.0, read=60.0)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON answer, or :class:`CliError` with the right exit code."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise _api_error(response)
        return response.json()

    def events(self, task_id: str, after: int = 0) -> Iterator[tuple[str, dict[str, Any], int]]:
        """``(event, data, id)`` from the task's event stream, until the node closes it."""
        headers = {"Accept": "text/event-stream"}
        if after:
            headers["Last-Event-ID"] = str(after)
        path = f"/v1/tasks/{task_id}/events"
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                yield from _parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach the stint node at {self.url} ({type(exc).__name__}: {exc}); "
            "is `stint serve` running there? (--url or STINT_URL)",
            UNREACHABLE,
        )


def _api_error(response: httpx.Response) -> CliError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and "detail" in problem:
        message = f"{problem.get('type', 'error')}: {problem['detail']}"
    else:
        problem = None
        message = f"HTTP {response.status_code} from {response.request.url}"
    return CliError(message, exit_code_for(response.status_code), problem)


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any], int]]:
    event, data, event_id = "message", "", 0
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data), event_id
            event, data = "message", ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data += value
        elif field == "id" and value.isdigit():
            event_id = int(value)
