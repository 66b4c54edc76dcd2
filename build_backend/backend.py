"""stint's in-tree PEP 517 build backend: setuptools, plus mypyc when asked for.

``pip install .`` builds the pure-Python package exactly as setuptools alone
would: no compiler and no mypy needed. ``STINT_COMPILE=1 pip install .`` also
compiles the hot modules with mypyc (see ``setup.py``); only then does the build
environment get mypy, at the exact version below (mypyc's generated code and its
runtime checks change between releases), and stint's own dependencies, whose
types mypyc reads as the development type check does.
"""

from __future__ import annotations

import os
import pathlib
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - re-exported hooks, unchanged
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
)

#: The one mypy (and so mypyc) the compiled build is made and tested with.
MYPY_PIN = "mypy==2.4.1"

#: True while setuptools runs setup.py only to learn the requirements or the metadata:
#: mypy is not installed yet then, and extensions change neither, so setup.py does not
#: compile (it reads this flag; pip runs setup.py in this backend's process).
skip_extensions = False


def compile_requested() -> bool:
    """True for STINT_COMPILE=1; unset, empty or 0: the pure build; anything else is an error."""
    value = os.environ.get("STINT_COMPILE", "").strip()
    if value not in ("", "0", "1"):
        raise RuntimeError(
            f"STINT_COMPILE={value!r} is not understood: set STINT_COMPILE=1 for the compiled "
            "build, or leave it unset (or 0) for the pure-Python one"
        )
    return value == "1"


@contextmanager
def _without_extensions() -> Iterator[None]:
    global skip_extensions  # noqa: PLW0603 - one flag, read by setup.py in-process
    skip_extensions = True
    try:
        yield
    finally:
        skip_extensions = False


def _dependencies() -> list[str]:
    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return deps


def _requires(hook: Callable[..., list[str]], config_settings: Any) -> list[str]:
    with _without_extensions():
        requires = hook(config_settings)
    return [*requires, MYPY_PIN, *_dependencies()] if compile_requested() else requires


def _metadata(hook: Callable[..., str], directory: str, config_settings: Any) -> str:
    with _without_extensions():
        return hook(directory, config_settings)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    return _metadata(
        _setuptools.prepare_metadata_for_build_wheel, metadata_directory, config_settings
    )


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    return _metadata(
        _setuptools.prepare_metadata_for_build_editable, metadata_directory, config_settings
    )
