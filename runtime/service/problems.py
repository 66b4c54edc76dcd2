"""Errors as ``application/problem+json`` (RFC 9457): one mapping from stint errors to HTTP.

``type`` is the error class's name (``TaskNotFoundError``), ``detail`` its message,
which already says what to do next. The service's own conditions (a bad request
body, a missing token, a store that is not shared) are stint errors too.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from runtime import (
    ConfigError,
    FunctionNotFoundError,
    InvalidTaskIdError,
    PayloadError,
    PayloadTooLargeError,
    QueueFullError,
    RuntimeClosedError,
    StintError,
    StoreError,
    TaskExistsError,
    TaskFinishedError,
    TaskNotFinishedError,
    TaskNotFoundError,
    WaitTimeoutError,
)

PROBLEM = "application/problem+json"
#: Seconds a client should wait before retrying a refused invoke (429) or an unready node (503).
RETRY_AFTER = 1


class InvalidRequestError(StintError, ValueError):
    """Raised for a request the API cannot read: a body that is not a JSON or msgpack
    object of the documented shape, a bad query parameter, an unsupported content type."""


class UnauthorizedError(StintError):
    """Raised when the node needs a token and the request has none, or the wrong one."""


class StoreNotSharedError(StintError, LookupError):
    """Raised by ``/v1/nodes`` on a store that only this process uses (memory, sqlite)."""


class UnsupportedMediaTypeError(InvalidRequestError):
    """Raised for a request body that is neither JSON nor msgpack."""


# Most specific first: PayloadTooLargeError is a PayloadError.
_STATUS: list[tuple[type[StintError], int]] = [
    (FunctionNotFoundError, 404),
    (TaskNotFoundError, 404),
    (StoreNotSharedError, 404),
    (TaskExistsError, 409),
    (TaskFinishedError, 409),
    (TaskNotFinishedError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (PayloadError, 422),
    (InvalidTaskIdError, 422),
    (ConfigError, 422),
    (InvalidRequestError, 422),
    (UnauthorizedError, 401),
    (QueueFullError, 429),
    (RuntimeClosedError, 503),
    (StoreError, 503),
    (WaitTimeoutError, 504),
]


def status_of(error: StintError) -> int:
    """The HTTP status for a stint error (500 for one the API does not expect)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


def problem(
    status: int, type_: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An ``application/problem+json`` response."""
    body = {
        "type": type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


def error_response(error: StintError) -> Response:
    status = status_of(error)
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="stint"'
    return problem(status, type(error).__name__, str(error), headers)


async def _stint_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StintError)
    return error_response(error)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    status = error.status_code
    name = HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    detail = error.detail if isinstance(error.detail, str) else HTTPStatus(status).description
    if status == 404:
        detail = f"no route {request.method} {request.url.path}: see /docs for the API"
    return problem(status, name, detail, dict(error.headers or {}))


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    return error_response(InvalidRequestError(_describe(error.errors())))


def _describe(errors: Any) -> str:
    """FastAPI's validation errors as one sentence: where, and what was wrong."""
    parts = []
    for item in errors:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) + " (see /docs for the API)"


def install(app: FastAPI) -> None:
    """Route every error the app can raise through :func:`problem`."""
    app.add_exception_handler(StintError, _stint_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
