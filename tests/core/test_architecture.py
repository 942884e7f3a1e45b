"""The dependency rule, by package: who may import whom (architecture.md, "Layers").

Every ``import`` and ``from ... import`` in every module is checked, including imports inside functions
and under ``TYPE_CHECKING``: a lazy import is still a dependency. A package's own modules may import each
other freely; between packages only the table's arrows are allowed, and the table itself must stay free
of cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> the project packages it may import. Runtime first, then development, then the entry point.
ALLOWED: dict[str, set[str]] = {
    "features": set(),  # the pure core
    "infra": {"features"},  # settings, logging, registry, Redis client and every store
    "stream": {"infra", "features"},  # the stream worker
    "service": {"infra", "features"},  # the HTTP API
    "training": {"infra", "features"},  # data, training, evaluation, export
    "harness": {"features", "infra", "stream", "service", "training"},  # dev and test infrastructure
    "benchmarks": {"harness", "features", "infra", "stream", "service", "training"},
    "benefits": {"harness", "benchmarks", "features", "infra", "stream", "service", "training"},
}
PACKAGES = set(ALLOWED)
RUNTIME = {"features", "infra", "stream", "service", "training"}

#: I/O frameworks the pure core must not import.
IO_FRAMEWORKS = {
    "redis",
    "faust",
    "mode",
    "aiokafka",
    "fastapi",
    "starlette",
    "onnxruntime",
    "lightgbm",
    "uvicorn",
    "prometheus_client",
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path`` (relative imports stay inside a package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


ALL_MODULES = [(pkg, p) for pkg in sorted(PACKAGES) for p in _modules(pkg)]
MODULE_PARAMS = [pytest.param(pkg, p, id=str(p.relative_to(ROOT))) for pkg, p in ALL_MODULES]


def test_every_project_package_is_in_the_table() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert on_disk == PACKAGES, f"packages without a rule: {sorted(on_disk - PACKAGES)}"


def test_the_table_has_no_cycle() -> None:
    state: dict[str, int] = {}

    def visit(pkg: str, path: tuple[str, ...]) -> None:
        if state.get(pkg) == 1:
            raise AssertionError(f"cycle: {' -> '.join((*path, pkg))}")
        if state.get(pkg) == 2:
            return
        state[pkg] = 1
        for dep in ALLOWED[pkg]:
            visit(dep, (*path, pkg))
        state[pkg] = 2

    for pkg in ALLOWED:
        visit(pkg, ())


@pytest.mark.parametrize(("package", "path"), MODULE_PARAMS)
def test_imports_follow_the_table(package: str, path: Path) -> None:
    project = _imported_top_levels(path) & PACKAGES - {package}
    bad = project - ALLOWED[package]
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports {sorted(bad)}, against the layer table"


def test_nothing_imports_the_entry_point_or_the_harness_from_runtime() -> None:
    for package, path in ALL_MODULES:
        imported = _imported_top_levels(path)
        if package != "benefits":
            assert "benefits" not in imported, f"{path.relative_to(ROOT)} imports the entry point"
        if package in RUNTIME:
            assert not imported & {"harness", "benchmarks"}, f"{path.relative_to(ROOT)} imports dev code"


CORE_FILES = _modules("features")


def test_core_files_exist() -> None:
    stems = {p.stem for p in CORE_FILES}
    assert {"events", "state", "decay", "offers", "projection", "eligibility"} <= stems


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_no_io_framework(path: Path) -> None:
    bad = _imported_top_levels(path) & IO_FRAMEWORKS
    assert not bad, f"{path.name} imports {sorted(bad)}: the core must stay pure"


def test_core_reads_no_clock() -> None:
    """The clock is a parameter: no time.time()/datetime.now() inside the core."""
    for path in CORE_FILES:
        text = path.read_text()
        for needle in ("time.time(", "datetime.now(", "datetime.utcnow(", "time.monotonic("):
            assert needle not in text, f"{path.name} reads the clock ({needle})"


def test_only_infra_knows_redis_scripts() -> None:
    """Key names and Lua scripts live in ``infra/``: no runtime module outside it registers a script or
    touches a raw client's commands through a store's private connection."""
    for package, path in ALL_MODULES:
        if package == "infra" or package not in RUNTIME:
            continue
        text = path.read_text()
        for needle in ("register_script(", "redis.call(", "store.r.", ".r.pipeline("):
            assert needle not in text, f"{path.relative_to(ROOT)} uses {needle!r}: that belongs in infra/"
