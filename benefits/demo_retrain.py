"""The demo's retraining loop: stream -> archive -> retrain -> promote -> the API serves the new model.

After the demo has streamed a sample of members' history through the broker (and the API is serving),
this part runs what production runs on a schedule (``deploy/k8s``: the archiver Deployment and the
retraining CronJob):

1. ``benefits archive``'s engine (:func:`stream.archiver.run_archiver`, its own consumer group) writes
   the topic to the Parquet archive, partitioned by event date, until the topic has been idle a moment;
2. ``benefits train --data ARCHIVE --catalog catalog.json --promote``: the archive alone is the training
   input (its impression events are the impressions, claims label them), evaluated against popularity
   and the promoted model on the same held-out rows, promoted only if it beats both;
3. the API replicas follow the registry pointer: the recommend answers' ``model_version`` shows the
   swap (or, when the gate kept the old model, the demo says why).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from rich.console import Console

from infra.registry import Registry
from infra.settings import Settings


def archive_and_retrain(
    settings: Settings, workdir: Path, catalog: Path, console: Console
) -> tuple[str | None, bool, str | None]:
    """Steps 1 and 2 (see the module docstring): (new version or None on failure, promoted?, the version
    promoted before)."""
    from stream.archiver import run_archiver
    from training.pipeline import TrainOptions, train_command

    archive = workdir / "archive"
    t = time.perf_counter()
    stats = asyncio.run(run_archiver(settings, archive, idle_exit_seconds=3.0))
    days = sorted(p.name for p in archive.glob("event_date=*"))
    console.print(
        f"archived {stats.archived:,} events into {len(days)} daily partitions "
        f"({days[0] if days else '-'} .. {days[-1] if days else '-'}) "
        f"in {time.perf_counter() - t:.1f}s -> {archive}"
    )
    registry = Registry(settings.registry_dir)
    before = registry.promoted()
    if stats.archived == 0:
        console.print("[red]the archiver found nothing on the topic[/red]")
        return None, False, before
    t = time.perf_counter()
    version = train_command(
        settings, data=archive, events=None, promote=True, options=TrainOptions(catalog=catalog)
    )
    promoted = registry.promoted() == version
    console.print(
        f"retrained on the archive in {time.perf_counter() - t:.1f}s: {version} "
        + ("[green]promoted[/green]" if promoted else f"registered, not promoted (still serving {before})")
    )
    if not promoted:
        why = registry.metadata(version).get("promotion", {}).get("reason", "")
        console.print(f"[yellow]the promotion gate kept {before}: {why}[/yellow]")
    return version, promoted, before


def run_retrain(
    settings: Settings, workdir: Path, catalog: Path, base: str, member_id: str, console: Console
) -> int:
    """Archive the topic, retrain on the archive, promote through the gate, watch the API swap; 0 = ok."""
    version, promoted, before = archive_and_retrain(settings, workdir, catalog, console)
    if version is None:
        return 1
    if not promoted:
        return 0
    # The API follows the registry pointer (BENEFITS_MODEL_POLL_SECONDS): wait for the swap.
    headers = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, headers=headers, timeout=5.0) as client:
        while time.perf_counter() - t0 < 30.0:
            r = client.post("/v1/recommend", json={"member_id": member_id, "limit": 5})
            if r.status_code == 200 and r.json().get("model_version") == version:
                console.print(
                    f"the API serves {version} {time.perf_counter() - t0:.1f}s after the promotion "
                    f"(previously {before})"
                )
                return 0
            time.sleep(0.2)
    console.print(f"[red]the API did not swap to {version} within 30 s[/red]")
    return 1
