"""The README's "Bring your own data" worked example, run as written through the real CLI (``benefits
train`` via typer's runner) with the catalogue JSON taken from the README itself, so the docs cannot
drift from what works. Bad input from the same example is one ``error:`` line and exit 2."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from benefits.cli import app
from harness.cafe import write_cafe
from infra.registry import Registry

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Bring your own data")
    return text[start : text.index("\n## ", start + 10)]


def readme_catalogue() -> dict[str, Any]:
    """The first JSON block of the section: the catalogue with its taxonomy."""
    block = re.search(r"```json\n(.*?)```", _section(), re.S)
    assert block is not None, "the README's Bring your own data section lost its catalogue example"
    data: dict[str, Any] = json.loads(block.group(1))
    return data


def readme_train_command() -> list[str]:
    """The ``benefits train`` line of the worked example, as arguments."""
    section = _section()
    example = section[section.index("**Worked example**") :]
    line = next(ln for ln in example.splitlines() if ln.startswith("benefits train "))
    return shlex.split(line)[1:]


@pytest.fixture
def cafe_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # What `python -m harness.cafe --out cafe` writes, with the README's catalogue.
    write_cafe(tmp_path / "cafe", n_members=500, catalog_file=readme_catalogue())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_worked_example_trains_through_the_cli(cafe_dir: Path) -> None:
    catalogue = readme_catalogue()
    assert {"restaurant", "coffee", "travel"} == set(catalogue["taxonomy"]["categories"])
    args = readme_train_command()
    assert args[0] == "train" and "--members" in args and "--spec" in args
    env = {"BENEFITS_REGISTRY_DIR": str(cafe_dir / "registry"), "BENEFITS_LOG_LEVEL": "WARNING"}
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 0, res.output
    assert "model " in res.stdout and "report:" in res.stdout
    registry = Registry(cafe_dir / "registry")
    (version,) = registry.versions()
    meta = registry.metadata(version)
    assert meta["split"] == "member" and meta["objective"] == "binary"
    assert {"attr_age_band", "attr_likes_coffee"} <= set(meta["feature_names"])
    # The operator's taxonomy (from the README's catalogue) is in the specification the model carries.
    subtypes = catalogue["taxonomy"]["subtypes"]
    want = [s for kind in ("coupon", "benefit", "consult") for s in subtypes.get(kind, [])]
    assert meta["feature_spec"]["vocabularies"]["subtype"] == want


def test_a_missing_catalogue_is_one_line_and_exit_2(cafe_dir: Path) -> None:
    (cafe_dir / "cafe" / "catalog.json").unlink()
    env = {"BENEFITS_REGISTRY_DIR": str(cafe_dir / "registry")}
    res = CliRunner().invoke(app, readme_train_command(), env=env)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no catalogue: expected cafe/catalog.json"), res.stderr
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


def test_a_catalogue_without_offers_is_refused_by_name(cafe_dir: Path) -> None:
    """The Kubernetes catalogue ConfigMap ships with "offers": [] for the operator to fill: training on
    it says so instead of dropping every row."""
    path = cafe_dir / "cafe" / "catalog.json"
    path.write_text(json.dumps({**readme_catalogue(), "offers": []}))
    res = CliRunner().invoke(app, readme_train_command(), env={"BENEFITS_REGISTRY_DIR": str(cafe_dir / "r")})
    assert res.exit_code == 2 and "has no offers" in res.stderr, res.output
