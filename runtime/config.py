"""Function configuration: every key, its default and its allowed range, checked at registration."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError, NonRetryableError

KINDS = ("async", "thread", "process")
_PATH_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HOOKS = ("initializer", "pre_freeze", "pre_stop")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")

Hook = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionConfig:
    """The settings of one registered function (see docs/lifecycle.md for each key)."""

    kind: str = "async"
    max_retries: int = 3
    max_event_age: float | None = None
    timeout: float = 60.0
    concurrency: int = 1
    max_instances: int = 10
    min_instances: int = 0
    idle_timeout: float = 300.0
    freeze_after: float = 0.0
    retry_backoff: float = 0.5
    retry_backoff_max: float = 60.0
    max_queued: int = 100_000
    initializer: Hook | None = None
    pre_freeze: Hook | None = None
    pre_stop: Hook | None = None
    initializer_timeout: float = 30.0
    pre_freeze_timeout: float = 10.0
    pre_stop_timeout: float = 10.0
    max_delay: float = 3600.0
    on_success: str | None = None
    on_failure: str | None = None
    retry_on: tuple[type[BaseException], ...] = (BaseException,)
    no_retry_on: tuple[type[BaseException], ...] = ()

    def is_retryable(self, error: BaseException) -> bool:
        """The retry policy: ``retry_on`` and not ``no_retry_on`` (``isinstance`` both ways);
        a :class:`NonRetryableError` never retries."""
        return (
            not isinstance(error, NonRetryableError)
            and isinstance(error, self.retry_on)
            and not isinstance(error, self.no_retry_on)
        )

    def is_retryable_name(self, names: Sequence[str]) -> bool:
        """The same policy for an error known by the qualified names of its classes (its MRO),
        as a worker process reports it."""
        return (
            _qualname(NonRetryableError) not in names
            and any(_qualname(kind) in names for kind in self.retry_on)
            and not any(_qualname(kind) in names for kind in self.no_retry_on)
        )


_FIELDS = {f.name for f in dataclasses.fields(FunctionConfig)}


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A registered function: its name, its handler and its validated configuration."""

    name: str
    handler: Callable[..., Any] | str
    config: FunctionConfig
    #: kind "process": import paths ("package.module:function") of the handler and hooks
    paths: dict[str, str] = dataclasses.field(default_factory=dict)


def make_spec(
    name: str, handler: Callable[..., Any] | str, options: dict[str, Any]
) -> FunctionSpec:
    """Validate a registration and return its spec, or raise :class:`ConfigError`."""
    check_name(name)
    unknown = sorted(set(options) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {', '.join(unknown)} for function {name!r}; "
            f"valid keys are: {', '.join(sorted(_FIELDS))}"
        )
    if isinstance(options.get("retry_on"), type):  # one class given alone: accept it
        options = {**options, "retry_on": (options["retry_on"],)}
    if isinstance(options.get("no_retry_on"), type):
        options = {**options, "no_retry_on": (options["no_retry_on"],)}
    config = FunctionConfig(**options)
    _check_config(config)
    if config.kind == "process":
        return FunctionSpec(name, handler, config, _process_paths(name, handler, config))
    if isinstance(handler, str):
        raise ConfigError(
            f"the handler of {name!r} is an import path ({handler!r}); import paths are for "
            f"kind='process': pass the function itself for kind={config.kind!r}"
        )
    _check_handler(name, handler, config)
    return FunctionSpec(name, handler, config)


def check_name(name: object) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"function name {name!r} is not valid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or '_'"
        )


def _check_config(c: FunctionConfig) -> None:
    if c.kind not in KINDS:
        raise ConfigError(f"kind={c.kind!r} is not supported; allowed: {', '.join(KINDS)}")
    _int_in("max_retries", c.max_retries, 0, 8)
    _int_in("concurrency", c.concurrency, 1, 10_000)
    _int_in("max_instances", c.max_instances, 1, 10_000)
    _int_in("min_instances", c.min_instances, 0, c.max_instances)
    _int_in("max_queued", c.max_queued, 1, 100_000_000)
    if c.max_event_age is not None:
        _seconds("max_event_age", c.max_event_age, positive=True, extra=" or None (never expires)")
    _seconds("timeout", c.timeout, positive=True)
    _seconds("idle_timeout", c.idle_timeout, positive=True)
    _seconds("freeze_after", c.freeze_after, positive=False)
    _seconds("retry_backoff", c.retry_backoff, positive=False)
    _seconds("retry_backoff_max", c.retry_backoff_max, positive=False)
    if c.retry_backoff_max < c.retry_backoff:
        raise ConfigError(
            f"retry_backoff_max={c.retry_backoff_max} is below retry_backoff={c.retry_backoff}; "
            "it must be >= retry_backoff"
        )
    for key in ("initializer_timeout", "pre_freeze_timeout", "pre_stop_timeout"):
        _seconds(key, getattr(c, key), positive=True)
    _seconds("max_delay", c.max_delay, positive=False)
    for key in ("on_success", "on_failure"):
        target = getattr(c, key)
        if target is not None and (not isinstance(target, str) or not _NAME_RE.fullmatch(target)):
            raise ConfigError(
                f"{key}={target!r} must be the name of a registered function (a str), or None"
            )
    for key in ("retry_on", "no_retry_on"):
        _exception_types(key, getattr(c, key))
    for key in _HOOKS:
        hook = getattr(c, key)
        if (
            hook is not None
            and not callable(hook)
            and not (c.kind == "process" and isinstance(hook, str))
        ):
            raise ConfigError(
                f"{key} must be a callable taking the instance context, or None; "
                f"got {type(hook).__name__}"
            )


def _exception_types(key: str, value: object) -> None:
    ok = isinstance(value, tuple) and all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in value
    )
    if not ok:
        raise ConfigError(
            f"{key}={value!r} must be a tuple of exception classes, such as "
            "(ConnectionError, TimeoutError)"
        )


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def qualified_names(error: BaseException) -> list[str]:
    """The qualified names of an error's classes, most derived first (what a worker reports)."""
    return [_qualname(kind) for kind in type(error).__mro__]


def _int_in(key: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(
            f"{key}={value!r} is out of range: it must be an integer from {low} to {high}"
        )


def _seconds(key: str, value: object, *, positive: bool, extra: str = "") -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(
            f"{key}={value!r} is out of range: it must be a number of seconds {bound}{extra}"
        )


def is_coroutine_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts too
    return call is not None and inspect.iscoroutinefunction(call)


def check_signature(name: str, handler: Callable[..., Any]) -> None:
    """A handler is called as ``handler(event, context)``: refuse one that cannot be."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return  # a builtin or C function without a signature: nothing to check
    try:
        signature.bind(None, None)
    except TypeError:
        raise ConfigError(
            f"the handler of {name!r} has the signature {signature}, but stint calls it as "
            "handler(event, context): give it two positional parameters (event, context)"
        ) from None


def _check_handler(name: str, handler: Callable[..., Any], config: FunctionConfig) -> None:
    if not callable(handler):
        raise ConfigError(f"the handler of {name!r} must be callable, got {type(handler).__name__}")
    check_signature(name, handler)
    kind = config.kind
    if kind == "async" and not is_coroutine_callable(handler):
        raise ConfigError(
            f"the handler of {name!r} is not a coroutine function, but kind='async' awaits it "
            "on the event loop; write it as 'async def', or register a blocking function "
            "with kind='thread'"
        )
    if kind == "thread":
        if is_coroutine_callable(handler):
            raise ConfigError(
                f"the handler of {name!r} is a coroutine function, but kind='thread' calls it on "
                "a thread of its own; register it with kind='async' instead"
            )
        if config.concurrency != 1:
            raise ConfigError(
                f"concurrency={config.concurrency} is out of range for kind='thread': an instance "
                "is one thread running one task at a time, so it must be 1; raise max_instances "
                "for more threads"
            )
        for key in ("initializer", "pre_freeze", "pre_stop"):
            hook = getattr(config, key)
            if hook is not None and is_coroutine_callable(hook):
                raise ConfigError(
                    f"{key} of {name!r} is a coroutine function, but kind='thread' runs hooks on "
                    "the instance's thread; make it a plain function"
                )


def import_path(fn: object) -> str | None:
    """``"package.module:function"`` for a module-level function, None if it has none."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        return None
    return f"{module}:{qualname}"


def _process_paths(name: str, handler: object, config: FunctionConfig) -> dict[str, str]:
    """Kind "process" runs code in another interpreter: everything is named by import path."""
    if callable(handler):
        check_signature(name, handler)
    paths = {"handler": _path_of(name, "handler", handler)}
    for key in _HOOKS:
        hook = getattr(config, key)
        if hook is not None:
            paths[key] = _path_of(name, key, hook)
    return paths


def _path_of(name: str, what: str, target: object) -> str:
    if isinstance(target, str):
        if not _PATH_RE.fullmatch(target):
            raise ConfigError(
                f"{what} of {name!r} is {target!r}; kind='process' names code by import path, "
                "like 'package.module:function'"
            )
        return target
    path = import_path(target)
    if path is None or not callable(target):
        raise ConfigError(
            f"{what} of {name!r} cannot be imported by a worker process (it is defined in "
            "__main__ or inside a function); define it at module level in an importable "
            "module, or pass its import path as 'package.module:function'"
        )
    return path
