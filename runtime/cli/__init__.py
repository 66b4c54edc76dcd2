"""The ``stint`` command: ``demo``, ``serve`` (a node) and the operations client of its API.

Each sub-command lives in its own module; ``stint --help`` lists them. The
client commands talk to a node over HTTP only (``--url``, ``--token``).
"""

from __future__ import annotations

from .app import cli, main

__all__ = ["cli", "main"]
