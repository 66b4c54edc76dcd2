"""A node of the ``stint-redis-2`` benchmark: ``python -m bench.redis_node REDIS_URL``.

Serves the no-op function on the cluster at REDIS_URL; prints ``ready`` once it is
registered there, and stops when its stdin closes.
"""

from __future__ import annotations

from runtime.loop import run

from .cluster import _serve_until_stdin_closes

if __name__ == "__main__":
    run(_serve_until_stdin_closes())
