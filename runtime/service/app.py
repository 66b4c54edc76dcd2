"""The ASGI app: ``create_app(rt)`` puts the HTTP API and the dashboard in front of a Runtime."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import HTMLResponse, JSONResponse, Response

from runtime import Runtime, RuntimeClosedError, __version__

from . import _pending, dashboard, models
from .api import Api, api_router
from .bodies import ENVELOPE_BYTES
from .events import Streams
from .problems import UnauthorizedError, error_response, install

#: Seconds between SSE keep-alive comments while a task does nothing.
HEARTBEAT = 15.0
_bearer = HTTPBearer(auto_error=False, description="the node's token (stint serve --token)")

DESCRIPTION = """\
Invoke, inspect, list, stop and watch stint tasks. Bodies are JSON, or msgpack with
`Content-Type: application/msgpack`; answers are msgpack when `Accept` names
`application/msgpack`. Errors are `application/problem+json` whose `type` is the
stint error's name. With a token, every route but `/healthz` needs
`Authorization: Bearer <token>`.
"""


class Guard:
    """Checks the node's token (constant-time); no token configured lets everything in."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, request: Request, *, allow_query: bool = False) -> None:
        """Raise :class:`UnauthorizedError` unless the request carries the token.

        ``allow_query``: also accept ``?token=`` — only for pages a browser opens by
        address (the dashboard, the API docs), which cannot send a header.
        """
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        candidate = given.strip() if scheme.lower() == "bearer" else ""
        if not candidate and allow_query:
            candidate = request.query_params.get("token", "")
        if not candidate:
            raise UnauthorizedError(
                "this node needs a token: send 'Authorization: Bearer <token>' (the CLI: "
                "--token or STINT_TOKEN; the dashboard: open /?token=<token>)"
            )
        if not hmac.compare_digest(candidate.encode(), self._token):
            raise UnauthorizedError("the token is wrong: use the one the node was started with")


def create_app(rt: Runtime, *, token: str | None = None, heartbeat: float = HEARTBEAT) -> FastAPI:
    """The HTTP API (``/v1``), health, metrics, docs and the dashboard for ``rt``.

    ``rt`` may be started before or after; until it is, ``/readyz`` answers 503.
    ``app.state.streams`` holds the open event streams (the server ends them on
    shutdown).
    """
    app = FastAPI(
        title="stint",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    guard = Guard(token)
    streams = Streams()
    app.state.streams = streams
    install(app)

    async def api_auth(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        guard.check(request)

    async def page_auth(request: Request) -> None:
        guard.check(request, allow_query=True)

    api = Api(rt, streams, heartbeat, rt.max_payload_bytes + ENVELOPE_BYTES)
    app.include_router(api_router(api, api_auth))
    _add_health(app, rt, api_auth)
    _add_pages(app, guard, page_auth)
    return app


def _add_health(app: FastAPI, rt: Runtime, auth: Any) -> None:
    @app.get("/healthz", response_model=models.Status, tags=["health"])
    async def healthz() -> Response:
        """The process is up (no token needed)."""
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=models.Status,
        dependencies=[Depends(auth)],
        tags=["health"],
        responses={503: {"model": models.Problem, "description": "not started, or closing"}},
    )
    async def readyz() -> Response:
        """The runtime is started and its store answers."""
        if not rt.started:
            raise RuntimeClosedError(
                "the runtime is not running (starting or closing): wait, then retry"
            )
        await _pending.ping_store(rt)
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        dependencies=[Depends(auth)],
        response_class=Response,
        tags=["health"],
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        """The runtime's Prometheus metrics (text format)."""
        return Response(
            await rt.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


def _add_pages(app: FastAPI, guard: Guard, auth: Any) -> None:
    page = dashboard.Page.load()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Response:
        try:
            guard.check(request, allow_query=True)
        except UnauthorizedError as error:
            if "text/html" in request.headers.get("accept", ""):
                return page.login(str(error))
            return error_response(error)
        return page.response()

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(auth)])
    async def openapi() -> Response:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(auth)])
    async def docs(request: Request) -> Response:
        token = request.query_params.get("token")
        url = "/openapi.json" if not token else f"/openapi.json?{request.url.query}"
        return get_swagger_ui_html(openapi_url=url, title="stint API")
