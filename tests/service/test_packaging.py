"""What ``pip install .`` ships: the CLI and service sub-packages with the dashboard's files,
and no top-level ``bench`` (the benchmarks run from a checkout)."""

from __future__ import annotations

import importlib.resources
import pathlib
import tomllib

import runtime

ROOT = pathlib.Path(__file__).resolve().parents[2]
# the package as imported: the checkout's, or the installed one when the suite runs
# from a copy outside the checkout (as CI does, to test what pip installed)
PACKAGE = pathlib.Path(runtime.__file__).resolve().parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_bench_is_not_installed_and_the_cli_is_its_own_package() -> None:
    find = PROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["actors*", "runtime*"]
    assert PROJECT["project"]["scripts"]["stint"] == "runtime.cli:main"
    assert (PACKAGE / "cli" / "__init__.py").exists()
    assert not (PACKAGE / "cli.py").exists()


def test_the_dashboard_files_are_package_data() -> None:
    assert PROJECT["tool"]["setuptools"]["package-data"]["runtime.service"] == ["static/*"]
    static = importlib.resources.files("runtime.service") / "static"
    for name in ("index.html", "app.js", "style.css"):
        assert (static / name).is_file(), name


def test_the_library_never_imports_the_service() -> None:
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("service", "cli"):
            continue
        text = path.read_text()
        assert "runtime.service" not in text and "from .service" not in text, relative


def test_the_service_uses_only_the_public_api() -> None:
    for path in (PACKAGE / "service").rglob("*.py"):
        for line in path.read_text().splitlines():
            if line.startswith(("from runtime.", "import runtime.", "from ..")):
                assert line.startswith("from runtime.loop import"), f"{path.name}: {line}"
