"""The ASGI app: ``create_app(rt)`` puts the HTTP API and the dashboard in front of a Runtime."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime import Runtime, RuntimeClosedError, __version__

from . import dashboard, models
from .api import Api, api_router
from .bodies import ENVELOPE_BYTES
from .events import Streams
from .problems import UnauthorizedError, error_response, install

#: Seconds between SSE keep-alive comments while a task does nothing.
HEARTBEAT = 15.0
#: Open without the token: liveness only.
OPEN = frozenset({"/healthz"})
#: Pages a browser opens by address: they also take the token as ``?token=``.
PAGES = frozenset({"/", "/docs", "/openapi.json"})

DESCRIPTION = """\
Invoke, inspect, list, stop and watch stint tasks. Bodies are JSON, or msgpack with
`Content-Type: application/msgpack`; answers are msgpack when `Accept` names
`application/msgpack`. Errors are `application/problem+json` whose `type` is the
stint error's name. With a token, every route but `/healthz` needs
`Authorization: Bearer <token>`.
"""


class Guard:
    """Checks the node's token (constant-time); no token configured lets everything in.

    It is plain ASGI middleware, not a FastAPI dependency: it runs on every request,
    and a dependency costs the hot path (invoke) more than the check itself.
    """

    def __init__(self, app: ASGIApp, token: str | None, page: dashboard.Page) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self._page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._token is None or scope["type"] != "http" or scope["path"] in OPEN:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            self.check(request, allow_query=scope["path"] in PAGES)
        except UnauthorizedError as error:
            response: Response = error_response(error)
            if scope["path"] == "/" and "text/html" in request.headers.get("accept", ""):
                response = self._page.login(str(error))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check(self, request: Request, *, allow_query: bool) -> None:
        """Raise :class:`UnauthorizedError` unless the request carries the token.

        ``allow_query``: also accept ``?token=`` — only for pages a browser opens by
        address (the dashboard, the API docs), which cannot send a header.
        """
        assert self._token is not None
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
    streams = Streams()
    app.state.streams = streams
    install(app)
    api = Api(rt, streams, heartbeat, rt.max_payload_bytes + ENVELOPE_BYTES)
    app.include_router(api_router(api))
    _add_health(app, rt)
    page = dashboard.Page.load()
    _add_pages(app, page)
    if token:
        app.add_middleware(Guard, token=token, page=page)
    return app


def _add_health(app: FastAPI, rt: Runtime) -> None:
    @app.get("/healthz", response_model=models.Status, tags=["health"])
    async def healthz() -> Response:
        """The process is up (no token needed)."""
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=models.Status,
        tags=["health"],
        responses={503: {"model": models.Problem, "description": "not started, or closing"}},
    )
    async def readyz() -> Response:
        """The runtime is started and its store answers."""
        if not rt.started:
            raise RuntimeClosedError(
                "the runtime is not running (starting or closing): wait, then retry"
            )
        await rt.ping_store()
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["health"],
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        """The runtime's Prometheus metrics (text format)."""
        return Response(
            await rt.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


def _add_pages(app: FastAPI, page: dashboard.Page) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return page.response()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> Response:
        return JSONResponse(_openapi(app))

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        token = request.query_params.get("token")
        query = "?" + urlencode({"token": token}) if token else ""
        return get_swagger_ui_html(openapi_url="/openapi.json" + query, title="stint API")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, with the bearer token on every operation but /healthz."""
    if app.openapi_schema is None:
        schema = app.openapi()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the node's token (stint serve --token), when it has one",
        }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path != "/healthz":
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("responses", {}).setdefault(
                        "401", {"description": "a token is needed (Authorization: Bearer)"}
                    )
    return app.openapi_schema or app.openapi()
