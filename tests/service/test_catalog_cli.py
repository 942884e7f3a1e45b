"""``benefits catalog import`` / ``export`` against a real Redis: 200 offers in one call with a report,
idempotent re-import, refused rows named, export re-imports unchanged."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benefits.cli import app
from features.demo_catalog import demo_catalog
from harness.embedded import Service
from service import bulk

pytestmark = [pytest.mark.integration]


@pytest.fixture
def env(redis_server: Service, unique: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BENEFITS_REDIS_URL": redis_server.url,
        "BENEFITS_REDIS_PREFIX": f"t{unique}",
        "BENEFITS_REGISTRY_DIR": str(tmp_path / "registry"),
        "BENEFITS_LOG_LEVEL": "WARNING",
    }


def test_import_200_offers_then_reimport_then_export(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    offers = demo_catalog(time.time(), 200)
    path = tmp_path / "offers.csv"
    path.write_text(bulk.to_csv(offers))

    dry = runner.invoke(app, ["catalog", "import", str(path), "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] and len(report["created"]) == 200 and not report["applied"]

    first = runner.invoke(app, ["catalog", "import", str(path), "--json"], env=env)
    report = json.loads(first.stdout)
    assert first.exit_code == 0 and report["applied"] and len(report["created"]) == 200
    version = report["catalog_version"]

    again = runner.invoke(app, ["catalog", "import", str(path), "--json"], env=env)
    report = json.loads(again.stdout)
    assert len(report["unchanged"]) == 200 and not report["applied"]
    assert report["catalog_version"] == version  # nothing moved

    exported = runner.invoke(app, ["catalog", "export"], env=env)
    assert exported.exit_code == 0
    assert exported.stdout == bulk.to_csv(offers)  # export == what was imported, byte for byte
    out = tmp_path / "out.json"
    assert (
        runner.invoke(app, ["catalog", "export", "--format", "json", "--out", str(out)], env=env).exit_code
        == 0
    )
    assert len(json.loads(out.read_text())) == 200


def test_a_refused_row_is_reported_and_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    lines = bulk.to_csv(demo_catalog(time.time(), 2)).splitlines()
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([lines[0], lines[1], lines[2].replace(",benefit,", ",gift,", 1)]) + "\n")
    res = CliRunner().invoke(app, ["catalog", "import", str(path)], env=env)
    assert res.exit_code == 1
    assert "1 refused" in res.stdout and "refused: row 2" in res.stdout and "kind" in res.stdout

    junk = tmp_path / "junk.json"
    junk.write_text("{nope")
    res = CliRunner().invoke(app, ["catalog", "import", str(junk)], env=env)
    assert res.exit_code == 2 and "not valid JSON" in res.output
