"""Shared helpers of the benchmarks: machine description and the result-file convention.

Every ``python -m benchmarks.NAME`` prints its JSON summary as the last line of stdout and writes it to
``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.machine import machine_info

__all__ = ["RESULTS_DIR", "machine_info", "write_result"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(name: str, summary: dict[str, Any]) -> Path:
    """Write ``summary`` to ``benchmarks/results/NAME.json`` and print it as the last line of stdout."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, sort_keys=True), flush=True)
    return path
