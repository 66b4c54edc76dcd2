"""stint as a service: the HTTP API, the server that runs it beside a runtime, the dashboard.

Built only on the public Runtime API (``from runtime import ...``); the library
never imports this package, so embedding stint costs nothing of FastAPI.

    from runtime.service import create_app
    app = create_app(rt, token="s3cret")   # an ASGI app for a started Runtime
"""

from __future__ import annotations

from .app import create_app
from .problems import InvalidRequestError, StoreNotSharedError, UnauthorizedError

__all__ = ["InvalidRequestError", "StoreNotSharedError", "UnauthorizedError", "create_app"]
