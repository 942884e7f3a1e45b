"""The model registry: a directory of immutable model versions and one pointer to the promoted one.

Layout::

    REGISTRY/
      models/VERSION/model.onnx       the served artifact (metadata_props carry the feature schema)
      models/VERSION/model.lgb.txt    the LightGBM model it was exported from (for parity checks)
      models/VERSION/metadata.json    feature names and order, schema, training window, metrics,
                                      data hash, code version, parity result
      models/VERSION/report.html      evaluation report (when trained by ``benefits train``)
      promoted.json                   {"version": ..., "previous": ..., "promoted_at": ...}

Promotion rewrites ``promoted.json`` atomically (write + rename); API replicas poll it and hot-swap.
Rollback is promoting the previous version. The directory can be a shared volume or a synced bucket
path; replicas only read it.
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

    def promote(self, version: str) -> dict[str, Any]:
        if version not in self.versions():
            raise RegistryError(f"model version {version!r} is not in the registry ({self.root})")
        previous = self.promoted()
        ptr = {"version": version, "previous": previous, "promoted_at": time.time()}
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".promoted-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(ptr, f)
        os.replace(tmp, self.root / POINTER_FILE)
        return ptr

    def rollback(self) -> dict[str, Any]:
        ptr = self.pointer()
        if not ptr or not ptr.get("previous"):
            raise RegistryError("no previous version to roll back to")
        return self.promote(str(ptr["previous"]))
