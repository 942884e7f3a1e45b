"""The dependency rule: the pure core imports no I/O framework; adapters import the core, not the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "redis",
    "faust",
    "mode",
    "aiokafka",
    "fastapi",
    "starlette",
    "onnxruntime",
    "lightgbm",
    "uvicorn",
}
#: Adapters live beside the core but are allowed I/O; everything else in features/ is core.
ADAPTER_PREFIXES = ("redis_layout", "redis_client", "stream", "replay_", "eventlog_kafka")
CORE_FILES = sorted(
    p
    for p in (ROOT / "features").glob("*.py")
    if not p.stem.startswith(ADAPTER_PREFIXES) and p.stem != "__init__"
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module == "features":
                names.update(f"features.{a.name}" for a in node.names)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("features."):
            names.add(node.module)
    return names


def test_core_files_exist() -> None:
    stems = {p.stem for p in CORE_FILES}
    assert {"events", "state", "decay", "offers", "projection", "eligibility"} <= stems


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_imports_no_io_framework(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}: the core must stay pure"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_never_imports_adapters(path: Path) -> None:
    imported = _imports(path)
    adapters = {
        m for m in imported if m.startswith("features.") and m.split(".")[1].startswith(ADAPTER_PREFIXES)
    }
    assert not adapters, f"{path.name} imports adapters {sorted(adapters)}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_never_imports_service_or_training(path: Path) -> None:
    bad = {m for m in _imports(path) if m in {"service", "training", "benefits", "benchmarks"}}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_core_reads_no_clock() -> None:
    """The clock is a parameter: no time.time()/datetime.now() inside the core."""
    for path in CORE_FILES:
        text = path.read_text()
        for needle in ("time.time(", "datetime.now(", "datetime.utcnow(", "time.monotonic("):
            assert needle not in text, f"{path.name} reads the clock ({needle})"
