"""``benefits promote``, ``benefits rollback`` and ``benefits models``: move the registry pointer only
to a version that passed :func:`service.promotion.check_version`, keep the promotion history, show it.

Each returns the process exit code: 0 done, 1 refused (the version failed a check; the pointer did not
move), 2 usage error (unknown version, nothing to roll back to).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from features.spec import load_spec
from features.taxonomy import load_taxonomy, spec_for_taxonomy
from infra.registry import POINTER_MOVES, Registry, RegistryError
from infra.settings import Settings
from service.errors import ModelRefused
from service.promotion import check_version


def _checked(settings: Settings, reg: Registry, version: str) -> list[str] | None:
    """The checks ``version`` passed, or None after printing why it was refused (and recording it)."""
    try:
        taxonomy = load_taxonomy(settings.taxonomy_path or settings.catalog_seed_path)
        spec = spec_for_taxonomy(load_spec(settings.feature_spec_path), taxonomy).with_lifecycle(
            settings.lifecycle
        )
        _, checks = check_version(reg, version, settings.scorer_runtime, settings.scorer_cache_dir, spec)
    except ModelRefused as exc:
        reg.record("refused", version, previous=reg.promoted(), reason=f"{exc.reason}: {exc.detail}")
        typer.echo(
            f"refused: model {version} failed its checks ({exc.reason}): {exc.detail}\n"
            f"the pointer is unchanged: {reg.promoted()}",
            err=True,
        )
        return None
    return checks


def promote_command(settings: Settings, version: str, offpolicy_logs: Path | None = None) -> int:
    """``offpolicy_logs`` (else the ``promotion_offpolicy_logs`` setting): the version must also win
    the off-policy gate on those logged slates (``benefits.evaluate_cli.offpolicy_gate``)."""
    from benefits.evaluate_cli import offpolicy_gate

    reg = Registry(settings.registry_dir)
    if version not in reg.versions():
        typer.echo(f"error: model version {version!r} is not in the registry ({reg.root})", err=True)
        return 2
    checks = _checked(settings, reg, version)
    if checks is None:
        return 1
    gate = offpolicy_gate(settings, reg, version, offpolicy_logs)
    if gate is None:
        return 1
    checks = [*checks, *gate]
    ptr = reg.promote(version, reason="benefits promote", checks=checks)
    typer.echo(
        "\n".join(
            [f"promoted {ptr['version']} (previous: {ptr['previous']})", *map("  ok  {}".format, checks)]
        )
    )
    return 0


def rollback_command(settings: Settings, to: str | None) -> int:
    reg = Registry(settings.registry_dir)
    try:
        if to is not None and to not in reg.promoted_versions():
            raise RegistryError(f"model version {to!r} was never promoted: use benefits promote")
        target = to
        if target is None:
            ptr = reg.pointer() or {}
            target = ptr.get("previous")
            if not target:
                raise RegistryError("no previous version to roll back to")
        if target not in reg.versions():
            raise RegistryError(f"model version {target!r} is not in the registry ({reg.root})")
        checks = _checked(settings, reg, str(target))
        if checks is None:
            return 1
        ptr = reg.rollback(to, checks=checks)
    except RegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    typer.echo(f"rolled back to {ptr['version']} (previous: {ptr['previous']})")
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def models_command(settings: Settings) -> int:
    reg = Registry(settings.registry_dir)
    current = reg.promoted()
    typer.echo("versions (* promoted):")
    for v in reg.versions():
        try:
            auc = reg.metadata(v).get("metrics", {}).get("model", {}).get("auc")
        except (RegistryError, ValueError, AttributeError):
            auc = None
        shown = f"  held-out auc {auc:.4f}" if isinstance(auc, float) else ""
        typer.echo(f"{'*' if v == current else ' '} {v}{shown}")
    history = reg.history()
    typer.echo(f"history ({len(history)} entries, oldest first):")
    for e in history:
        moved = "->" if e.get("action") in POINTER_MOVES else "x "
        reason = f"  {e['reason']}" if e.get("reason") else ""
        typer.echo(f"  {_when(float(e.get('at', 0)))}  {e.get('action', '?'):<12} {moved} {e.get('version')}"
                   f"  (was {e.get('previous')}){reason}")  # fmt: skip
    return 0
