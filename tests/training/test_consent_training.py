"""Consent in training: impressions shown while a member had opted out are not rows, rows after a
re-consent see only what was collected since (as the service did), every other row is unchanged, and the
count of what was left out is logged and kept in the model's metadata."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import events as ev
from infra.registry import Registry
from training import dataset, pipeline
from training.consent_filter import BEHAVIOURAL_TYPES
from training.simulate import load_catalog


def _consent(member: str, ts: float, on: bool, i: int) -> ev.ConsentChanged:
    return ev.ConsentChanged(event_id=f"consent-{i}", member_id=member, event_ts=ts, personalization=on)


def _plan(imp: pd.DataFrame, events: list[ev.Event]) -> tuple[str, str, float, float, float, list[ev.Event]]:
    """Two busy members: one opts out for good mid-history, one opts out and back in (just before one
    of their impressions, after many page views)."""
    views = pd.Series([e.member_id for e in events if isinstance(e, ev.PageView)]).value_counts()
    busy = imp["member_id"].value_counts()
    gone, back = [m for m in busy.index if views.get(m, 0) >= 5][:2]
    ts_gone = np.sort(imp.loc[imp["member_id"] == gone, "event_ts"].unique())
    ts_back = np.sort(imp.loc[imp["member_id"] == back, "event_ts"].unique())
    off_gone = float(ts_gone[len(ts_gone) // 2]) - 0.5
    off_back = float(ts_back[len(ts_back) // 4]) - 0.5
    on_back = float(ts_back[len(ts_back) // 2]) - 0.5
    changes: list[ev.Event] = [
        _consent(gone, off_gone, False, 0),
        _consent(back, off_back, False, 1),
        _consent(back, on_back, True, 2),
    ]
    return gone, back, off_gone, off_back, on_back, changes


def test_rows_shown_while_opted_out_are_not_trained_on(
    sim_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = dataset.load_events(sim_dir / "events.jsonl")
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    offers = load_catalog(sim_dir / "catalog.json")
    gone, back, off_gone, off_back, on_back, changes = _plan(imp, events)
    plain = dataset.build(imp, events, offers)
    with caplog.at_level(logging.WARNING, logger="training.consent_filter"):
        built = dataset.build(imp, [*events, *changes], offers)

    def rows(ts: dataset.TrainingSet, member: str) -> pd.Series:
        return ts.frame.loc[ts.frame["member_id"] == member, "event_ts"]

    # Dropped: exactly the rows inside [off, on).
    assert (rows(built, gone) < off_gone).all()
    assert len(rows(built, gone)) == (rows(plain, gone) < off_gone).sum()
    b = rows(built, back)
    assert not ((b >= off_back) & (b < on_back)).any()
    assert len(b) == ((rows(plain, back) < off_back) | (rows(plain, back) >= on_back)).sum()
    expected_drop = len(plain) - len(built)
    assert expected_drop > 0
    assert built.consent.rows_dropped == expected_drop and built.consent.members_opted_out == 2
    in_off = sum(
        1
        for e in events
        if ev.event_type(e) in BEHAVIOURAL_TYPES
        and (
            (e.member_id == gone and e.event_ts >= off_gone)
            or (e.member_id == back and off_back <= e.event_ts < on_back)
        )
    )
    assert built.consent.events_ignored == in_off > 0
    assert f"dropped {expected_drop} impression rows" in caplog.text

    # Every other member's rows are untouched, feature for feature.
    others_built = ~built.frame["member_id"].isin([gone, back]).to_numpy()
    others_plain = ~plain.frame["member_id"].isin([gone, back]).to_numpy()
    np.testing.assert_array_equal(built.X[others_built], plain.X[others_plain])

    # After the re-consent, the member's first row sees no page view from before the opt-out (the
    # opt-out cleared them), while without consent events the same row sees them all.
    names = list(built.spec.names)
    first_after = float(b[b >= on_back].min())
    row_built = built.X[(built.frame["member_id"] == back).to_numpy() & (built.ts == first_after)][0]
    row_plain = plain.X[(plain.frame["member_id"] == back).to_numpy() & (plain.ts == first_after)][0]
    views = names.index("views_30d")
    since = sum(
        1
        for e in events
        if isinstance(e, ev.PageView) and e.member_id == back and on_back <= e.event_ts < first_after
    )
    assert row_built[views] <= since + 1e-4  # (decayed) page views since the re-consent only
    assert row_plain[views] > since + 1.0


def test_training_metadata_reports_what_consent_left_out(sim_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "sim"
    shutil.copytree(sim_dir, data)
    events = dataset.load_events(data / "events.jsonl")
    imp = pd.read_parquet(data / "impressions.parquet")
    *_, changes = _plan(imp, events)
    with (data / "events.jsonl").open("ab") as f:
        for e in changes:
            f.write(ev.encode(e) + b"\n")
    out = pipeline.run(tmp_path / "reg", data, promote=False, progress=False)
    report = out.metadata["data"]["consent"]
    assert report["rows_dropped"] > 0 and report["members_opted_out"] == 2
    assert out.metadata["data"]["rows"] == len(imp) - report["rows_dropped"]
    stored = Registry(tmp_path / "reg").metadata(out.version)
    assert stored["data"]["consent"] == report
