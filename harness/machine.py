"""What a benchmark or reliability report says about where it ran: the machine and the code version."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    """CPU model, core counts and Python version of this machine."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def code_version(root: Path = ROOT, watched: Sequence[str] = ()) -> dict[str, Any]:
    """The checkout's short commit, and which files under ``watched`` had uncommitted changes (a shared
    work tree); ``{"commit": None}`` when git does not answer."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--", *watched],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split("\n")
            if watched
            else []
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}
    return {"commit": head, "uncommitted": sorted(line[3:] for line in dirty if line.strip())}
