"""The README documents every setting (and nothing that is not one)."""

from __future__ import annotations

import re
from pathlib import Path

from infra.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [n for n in Settings.model_fields if f"BENEFITS_{n.upper()}" not in README]
    assert not missing, f"settings missing from README: {missing}"


def test_readme_documents_no_unknown_setting() -> None:
    documented = set(re.findall(r"BENEFITS_([A-Z0-9_]+)", README))
    unknown = {d for d in documented if d.lower() not in Settings.model_fields}
    assert not unknown, f"README documents settings that do not exist: {sorted(unknown)}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("##")[0]
    assert "make demo" in head and "make test" in head
