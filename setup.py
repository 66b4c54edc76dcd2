"""Build script: the pure-Python package by default; the hot modules compiled with mypyc
when STINT_COMPILE=1 (docs/performance.md, "Compiled build").

Everything else about the distribution lives in pyproject.toml. This file only adds
the extension modules, and keeps each build's artifacts apart so that a pure build
made after a compiled one can never pick up a stale ``.so``.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_backend"))
import backend  # the in-tree build backend (already loaded when pip runs the build)

#: The modules compiled by STINT_COMPILE=1: every module a task passes through on the
#: hot path. Not compiled: the public ``__init__`` modules, the thread and process
#: kinds (pykka subclasses and subprocess plumbing), config (a dataclass validated
#: after construction), the SQLite store, the service and the CLI.
HOT_MODULES = [
    "actors/_actor.py",
    "actors/_clock.py",
    "actors/_ref.py",
    "actors/_scheduler.py",
    "actors/_supervision.py",
    "actors/_system.py",
    "runtime/codec.py",
    "runtime/context.py",
    "runtime/ids.py",
    "runtime/instances/async_kind.py",
    "runtime/instances/base.py",
    "runtime/messages.py",
    "runtime/metrics.py",
    "runtime/pool.py",
    "runtime/record.py",
    "runtime/registry.py",
    "runtime/runtime.py",
    "runtime/states.py",
    "runtime/stores/memory.py",
    "runtime/task_actor.py",
    "runtime/wire.py",
]


def _extensions() -> list[object]:
    try:
        from mypyc.build import mypycify
    except ImportError:
        raise SystemExit(
            f"STINT_COMPILE=1 needs mypyc ({backend.MYPY_PIN}) in the build environment: use pip's "
            "default build isolation, or install it first; unset STINT_COMPILE for the "
            "pure-Python build"
        ) from None
    import mypy.version

    if f"mypy=={mypy.version.__version__}" != backend.MYPY_PIN:
        raise SystemExit(
            f"STINT_COMPILE=1 is made and tested with {backend.MYPY_PIN}, not mypy "
            f"{mypy.version.__version__}: install {backend.MYPY_PIN} in the build environment"
        )
    modules: list[object] = mypycify(
        HOT_MODULES, opt_level="3", group_name="stint", target_dir=os.path.join("build", "mypyc")
    )
    return modules


if __name__ == "__main__":
    compiled = backend.compile_requested()
    setup(
        # none while setuptools only asks for requirements or metadata (no mypy there yet)
        ext_modules=_extensions() if compiled and not backend.skip_extensions else [],
        # one build folder per flavour: a pure build never packs a compiled one's leftovers
        options={"build": {"build_base": f"build/{'compiled' if compiled else 'pure'}"}},
    )
