"""The dashboard: one HTML page shipped in the package, its CSS and JS inlined at load.

One document means one request carries the token (``/?token=``): the page then
keeps the token in ``sessionStorage``, strips it from the address bar and sends it
as a header on every API call. The inline style and script are allowed by their
hashes in a Content-Security-Policy that forbids everything else but calls to
this origin.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from importlib import resources

from starlette.responses import HTMLResponse

from runtime import __version__

_STATIC = resources.files(__package__) / "static"


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@dataclass(frozen=True)
class Page:
    html: str
    csp: str

    @classmethod
    def load(cls) -> Page:
        """Read the shipped files and assemble the page (once per app)."""
        style = (_STATIC / "style.css").read_text()
        script = (_STATIC / "app.js").read_text()
        template = (_STATIC / "index.html").read_text()
        page = (
            template.replace("{{version}}", html.escape(__version__))
            .replace("/*{{style}}*/", style)
            .replace("/*{{script}}*/", script)
        )
        csp = (
            "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
            f"style-src {_hash(style)}; script-src {_hash(script)}; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return cls(page, csp)

    def response(self) -> HTMLResponse:
        return HTMLResponse(self.html, headers=self._headers(self.csp))

    def login(self, message: str) -> HTMLResponse:
        """What a browser gets at ``/`` without the token: how to open the dashboard."""
        body = (
            "<!doctype html><meta charset=utf-8><title>stint: token needed</title>"
            "<body style='font:16px system-ui;margin:3em auto;max-width:36em;padding:0 1em'>"
            "<h1>stint</h1><p>" + html.escape(message) + "</p>"
            "<p>Open <code>/?token=YOUR_TOKEN</code>: the page keeps the token for this tab "
            "only and removes it from the address bar.</p></body>"
        )
        return HTMLResponse(
            body, 401, headers=self._headers("default-src 'none'; style-src 'unsafe-inline'")
        )

    @staticmethod
    def _headers(csp: str) -> dict[str, str]:
        return {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
