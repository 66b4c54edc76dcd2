"""A runtime as a node of a cluster, on a shared store (``redis://``)."""

from __future__ import annotations

from .node import ClusterHooks, ClusterNode
from .source import SharedSource

__all__ = ["ClusterHooks", "ClusterNode", "SharedSource"]
