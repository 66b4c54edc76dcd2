"""``module:attribute`` -> a Runtime, the way uvicorn finds an app."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, cast

from runtime import ConfigError, Runtime

logger = logging.getLogger("stint.serve")


def load_runtime(target: str, store: str | None = None) -> Runtime:
    """Import ``module:attribute`` (current directory first on the path) and return the
    Runtime it names, or the one a zero-argument callable there returns; unstarted.

    With ``store``, ``STINT_STORE`` is set before the import (a factory can read it),
    and a Runtime built on another store is rebuilt on ``store`` with the same
    functions and settings.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"TARGET {target!r} must be 'module:attribute', like 'myapp.tasks:rt' (a Runtime) "
            "or 'myapp.tasks:build' (a function returning one)"
        )
    if store is not None:
        os.environ["STINT_STORE"] = store
    found = _attribute(_import(module_name), module_name, attribute)
    rt = found() if callable(found) and not isinstance(found, Runtime) else found
    if not isinstance(rt, Runtime):
        raise ConfigError(
            f"{target} is a {type(rt).__name__}, not a Runtime (or a function returning one)"
        )
    if rt.started:
        raise ConfigError(f"{target} is already started: build the Runtime, stint serve starts it")
    if store is not None and rt.store.url != store:
        logger.info("rebuilding the runtime on --store", extra={"store": store})
        rt = rebuild(rt, store)
    return rt


def _import(module_name: str) -> Any:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import module {module_name!r} (from {here}): run stint serve from "
                "the directory that holds it, or install it"
            ) from None
        raise


def _attribute(module: Any, module_name: str, attribute: str) -> Any:
    value = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attribute!r}: name the Runtime "
                "(or the function that builds it) after the colon"
            ) from None
    return value


def rebuild(rt: Runtime, store: str) -> Runtime:
    """A new, unstarted Runtime on ``store`` with ``rt``'s functions and public settings."""
    new = Runtime(
        store=store,
        max_payload_bytes=rt.max_payload_bytes,
        clock=rt.clock,
        tick_interval=rt.tick_interval,
        close_timeout=rt.close_timeout,
    )
    for name, spec in rt.functions.items():
        options = {f.name: getattr(spec.config, f.name) for f in dataclasses.fields(spec.config)}
        # an import path (kind="process") is a valid handler too, whatever the annotation says
        new.register(name, cast(Callable[..., Any], spec.handler), **options)
    return new
