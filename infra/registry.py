"""The model registry: a directory of immutable model versions and one pointer to the promoted one.

Layout::

    REGISTRY/
      models/VERSION/model.onnx       the served artifact (metadata_props carry the feature schema)
      models/VERSION/model.lgb.txt    the LightGBM model it was exported from (for parity checks)
      models/VERSION/metadata.json    feature names and order, schema, training window, metrics,
                                      data hash, code version, parity result
      models/VERSION/report.html      evaluation report (when trained by ``benefits train``)
      promoted.json                   {"version": ..., "previous": ..., "promoted_at": ...}
      history.jsonl                   append-only: one line per pointer move (promote, rollback, auto
                                      promotion by training) and per refused promotion, with its reason

Promotion rewrites ``promoted.json`` atomically (write + rename); API replicas poll it and hot-swap.
Rollback is promoting an earlier version (the previous one, or ``to`` any version the pointer once
held). This module moves the pointer and keeps the history; *checking* a version before it is promoted
(it loads, its schema matches, its predictions agree with its LightGBM source) is the caller's job
(``service.promotion``), so nothing here imports a model runtime. The directory can be a shared volume
or a synced bucket path; replicas only read it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
LGB_FILE = "model.lgb.txt"
METADATA_FILE = "metadata.json"
POINTER_FILE = "promoted.json"
HISTORY_FILE = "history.jsonl"


class RegistryError(Exception):
    pass


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def version_dir(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"invalid model version {version!r}")
        return self.models_dir / version

    def versions(self) -> list[str]:
        if not self.models_dir.exists():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / MODEL_FILE).exists())

    def metadata(self, version: str) -> dict[str, Any]:
        path = self.version_dir(version) / METADATA_FILE
        if not path.exists():
            raise RegistryError(f"model version {version!r} has no {METADATA_FILE}")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def model_path(self, version: str) -> Path:
        return self.version_dir(version) / MODEL_FILE

    def pointer(self) -> dict[str, Any] | None:
        path = self.root / POINTER_FILE
        if not path.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data

    def promoted(self) -> str | None:
        ptr = self.pointer()
        return str(ptr["version"]) if ptr and ptr.get("version") else None

    def promote(
        self, version: str, *, action: str = "promote", reason: str = "", checks: list[str] | None = None
    ) -> dict[str, Any]:
        """Point at ``version`` and append the move to the history; returns the new pointer."""
        if version not in self.versions():
            raise RegistryError(f"model version {version!r} is not in the registry ({self.root})")
        previous = self.promoted()
        ptr = {"version": version, "previous": previous, "promoted_at": time.time()}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".promoted-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(ptr, f)
        os.replace(tmp, self.root / POINTER_FILE)
        self.record(action, version, previous=previous, reason=reason, checks=checks)
        return ptr

    def rollback(self, to: str | None = None, *, checks: list[str] | None = None) -> dict[str, Any]:
        """Point back at ``to`` (a version the pointer held before), or at the previous one."""
        current = self.promoted()
        if to is None:
            ptr = self.pointer()
            if not ptr or not ptr.get("previous"):
                raise RegistryError("no previous version to roll back to")
            to = str(ptr["previous"])
        elif to not in self.promoted_versions():
            raise RegistryError(f"model version {to!r} was never promoted: promote it instead")
        if to == current:
            raise RegistryError(f"model version {to!r} is already promoted")
        return self.promote(to, action="rollback", reason=f"rolled back from {current}", checks=checks)

    # -- history -----------------------------------------------------------------------------------------

    def record(
        self,
        action: str,
        version: str,
        *,
        previous: str | None = None,
        reason: str = "",
        checks: list[str] | None = None,
    ) -> None:
        """Append one line to ``history.jsonl`` (one ``write`` of one line: no interleaving)."""
        entry = {
            "at": time.time(),
            "action": action,
            "version": version,
            "previous": previous,
            "reason": reason,
            "checks": checks or [],
        }
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / HISTORY_FILE, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def history(self) -> list[dict[str, Any]]:
        """Every recorded move and refusal, oldest first (unreadable lines are skipped)."""
        path = self.root / HISTORY_FILE
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def promoted_versions(self) -> list[str]:
        """Versions the pointer has held, newest first, each once (from the history and the pointer)."""
        seen: list[str] = []
        ptr = self.pointer() or {}
        candidates = [ptr.get("version"), ptr.get("previous")]
        moves = [e for e in self.history() if e.get("action") in POINTER_MOVES]
        candidates[1:1] = [e.get("version") for e in reversed(moves)]
        for v in candidates:
            if v and v not in seen:
                seen.append(str(v))
        return seen


#: History actions that moved the pointer (others record refusals).
POINTER_MOVES = frozenset({"promote", "rollback", "auto_promote"})
