"""The shadow model rescoring the live ranking's feature rows gives the slate and scores that ranking
from scratch with the shadow model gives: the shortcut (no eligibility, rows or reasons recomputed, the
model in a worker thread) changes what it costs, never what it logs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from features.demo_catalog import demo_catalog
from harness.members import random_context, simulate_member
from harness.testmodel import build_registry
from service.catalog import build_snapshot
from service.metrics import Metrics
from service.model import load_model
from service.ranking import Mode, Policy, rank
from service.shadow import ShadowItem, ShadowScorer


def test_rescoring_the_live_rows_equals_ranking_from_scratch(tmp_path: Path) -> None:
    registry = build_registry(tmp_path / "registry")
    live = load_model(registry.version_dir("v1") / "model.onnx", "v1", "onnx", tmp_path / "cache")
    shadow = load_model(registry.version_dir("v2") / "model.onnx", "v2", "onnx", tmp_path / "cache")
    now = time.time()
    rng = np.random.default_rng(7)
    snap = build_snapshot(1, demo_catalog(now - 86400, 120), now)
    policy = Policy()
    scorer = ShadowScorer(tmp_path / "shadow.jsonl", 16, policy, Metrics(), seed=1)
    differs = 0
    for i in range(40):
        state, context = simulate_member(f"sh-{i}", now, rng), random_context(rng)
        mode = Mode.PERSONALISED if i % 4 else Mode.COLD_START
        out = rank(snap, state, context, now, 5, model=live, mode=mode, policy=policy)
        assert out.x is not None and out.eligible_idx is not None
        base = (f"r{i}", now, None, snap, state, context, 5, mode, shadow, "v1", [], [])
        fast = asyncio.run(scorer.score(ShadowItem(*base, out.eligible_idx, out.x)))["shadow"]
        slow = asyncio.run(scorer.score(ShadowItem(*base)))["shadow"]
        assert fast == slow, (i, fast, slow)
        differs += fast["slate"] != [it.offer_id for it in out.items]
    assert differs > 0  # two different models: the comparison is not between identical slates
