"""The retraining loop over real processes: events published to the real broker -> archived by
``benefits archive`` (its own process, its own consumer group) -> ``benefits train --events ARCHIVE_DIR``
(its own process) trains on exactly the rows of training from the original JSONL log: the same feature
rows, and so the same LightGBM model byte for byte (training is deterministic)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from features import events as ev
from harness.embedded import Service
from infra.registry import LGB_FILE, Registry
from training import dataset
from training.simulate import simulate_to_dir
from training.sources import load_source

pytestmark = pytest.mark.integration


async def _publish(bootstrap: str, topic: str, events: list[ev.Event]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, ev.encode(e), key=e.member_id.encode()) for e in events]
        await producer.flush()
        for f in futures:
            await f
    finally:
        await producer.stop()


def _benefits(args: list[str], env: dict[str, str], timeout: float = 600.0) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benefits.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"benefits {args[0]} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_published_archived_trained_equals_training_from_the_log(
    broker: Service, topics: dict[str, str], unique: str, tmp_path: Path
) -> None:
    sim = tmp_path / "sim"
    simulate_to_dir(sim, n_members=150, days=4.0, n_offers=60, seed=5, progress=False)
    events = dataset.load_events(sim / "events.jsonl")
    asyncio.run(_publish(broker.url, topics["events"], events))

    env = {k: v for k, v in os.environ.items() if not k.startswith("BENEFITS_")}
    env.update(
        BENEFITS_KAFKA_BOOTSTRAP=broker.url,
        BENEFITS_EVENTS_TOPIC=topics["events"],
        BENEFITS_ARCHIVE_CONSUMER_GROUP=f"archive-{unique}",
        BENEFITS_LOG_LEVEL="WARNING",
    )
    archive = tmp_path / "archive"
    out = _benefits(["archive", "--out", str(archive), "--idle-exit-seconds", "4"], env)
    assert f"archived {len(events)} events" in out, out

    # The same rows, in process: the archive read back folds into the same feature matrix.
    from_log = load_source(sim)
    from_archive = load_source(sim, archive)
    assert sorted(map(ev.encode, from_archive.events)) == sorted(map(ev.encode, from_log.events))
    a = dataset.build(from_log.impressions, from_log.events, from_log.offers)
    b = dataset.build(from_archive.impressions, from_archive.events, from_archive.offers)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)

    # And through the CLI, as the retraining job runs it: the same model.
    models = {}
    for name, extra in (("log", []), ("archive", ["--events", str(archive)])):
        reg = tmp_path / f"reg-{name}"
        _benefits(
            ["train", "--data", str(sim), *extra, "--no-promote"], {**env, "BENEFITS_REGISTRY_DIR": str(reg)}
        )
        (version,) = Registry(reg).versions()
        models[name] = (Registry(reg).version_dir(version) / LGB_FILE).read_text()
    assert models["archive"] == models["log"]
