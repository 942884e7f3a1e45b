"""Bring your own data, as a data scientist would: the cafe operator's own taxonomy, member attributes,
ISO timestamps, extra columns; a split by member; the importable booster; the archive round trip."""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features import events as ev
from features.spec import load_spec
from harness.cafe import write_cafe
from infra.archive import ArchiveWriter, Record, read_archive
from infra.registry import LGB_FILE, Registry
from training import byod, dataset, import_model, pipeline
from training.simulate import load_catalog


@pytest.fixture(scope="module")
def cafe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_cafe(tmp_path_factory.mktemp("cafe"), n_members=1200)


@pytest.fixture(scope="module")
def with_attributes(cafe: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> pipeline.Outcome:
    return pipeline.run(
        tmp_path_factory.mktemp("reg"),
        cafe["impressions"],
        promote=True,
        progress=False,
        spec=load_spec(cafe["spec"]),
        members=cafe["members"],
        split_by="member",
    )


def test_member_attributes_rank_new_members_better(
    cafe: dict[str, Path], with_attributes: pipeline.Outcome, tmp_path: Path
) -> None:
    without = pipeline.run(
        tmp_path / "reg", cafe["impressions"], promote=False, progress=False, split_by="member"
    )
    auc_with = with_attributes.result["overall"]["model"]["auc"]
    auc_without = without.result["overall"]["model"]["auc"]
    assert auc_with > auc_without + 0.05, (auc_with, auc_without)
    top = [name for name, _ in with_attributes.metadata["importance"][:10]]
    assert {"attr_income", "attr_likes_coffee", "attr_household"} & set(top), top
    assert with_attributes.metadata["split"] == "member"
    # The operator's taxonomy is in the specification the model carries (its own hash).
    spec = with_attributes.metadata["feature_spec"]
    assert spec["vocabularies"]["subtype"] == [
        "percent_off",
        "fixed_off",
        "lounge",
        "priority_booking",
        "trip_planning",
    ]


def test_unused_columns_are_named_and_iso_timestamps_parse(
    cafe: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        imp, extra = byod.impression_table(cafe["impressions"], load_spec(cafe["spec"]))
    assert "batch_code" in caplog.text and extra == []
    raw = pd.read_csv(cafe["impressions"])["event_ts"]
    assert "+0" in raw.iloc[0]  # written with a zone offset
    assert imp["event_ts"].dtype == np.float64
    assert imp["event_ts"].iloc[0] == pytest.approx(pd.Timestamp(raw.iloc[0]).timestamp(), abs=1e-5)
    with caplog.at_level(logging.WARNING):
        byod.members_events(cafe["members"], load_spec())  # the default spec declares no attribute
    assert "age_band" in caplog.text and "ignored" in caplog.text


def test_missing_catalogue_names_the_expected_path(cafe: dict[str, Path], tmp_path: Path) -> None:
    table = tmp_path / "impressions.csv"
    table.write_text(cafe["impressions"].read_text())
    with pytest.raises(byod.DataError, match=str(tmp_path / "catalog.json")):
        pipeline.load_source(table)


def test_single_row_requests_skip_ndcg_with_a_note(cafe: dict[str, Path], tmp_path: Path) -> None:
    imp = pd.read_csv(cafe["impressions"]).drop(columns=["request_id", "position"])
    imp["event_ts"] = pd.to_datetime(imp["event_ts"], utc=True) + pd.to_timedelta(
        np.arange(len(imp)), unit="s"
    )
    (tmp_path / "catalog.json").write_text(cafe["catalog"].read_text())
    imp.to_csv(tmp_path / "imp.csv", index=False)
    out = pipeline.run(tmp_path / "reg", tmp_path / "imp.csv", promote=False, progress=False)
    assert any("NDCG@5 skipped" in n for n in out.result["notes"])
    assert np.isnan(out.result["overall"]["model"]["ndcg@5"])


def test_events_and_labels_combine(cafe: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    mem = pd.read_csv(cafe["members"])
    with log.open("wb") as f:
        for i, m in enumerate(mem["member_id"].tolist()[:50]):
            e = ev.PageView(event_id=f"pv{i}", member_id=m, event_ts=1_760_000_000.0, page_type="category",
                            category="coffee")  # fmt: skip
            f.write(ev.encode(e) + b"\n")
    both = pipeline.load_source(cafe["impressions"], log)
    labels = pipeline.load_source(cafe["impressions"])
    only = pipeline.load_source(cafe["impressions"], log, history="events")
    assert len(both.events) == len(labels.events) + 50
    assert len(only.events) == 50


def test_calibrated_model_is_served_calibrated(with_attributes: pipeline.Outcome) -> None:
    cal = with_attributes.metadata["calibration"]
    assert cal["method"] == "platt" and len(cal["map"]["x"]) >= 2
    assert cal["test_ece_after"] <= cal["test_ece_before"] + 0.01
    # Parity of the exported graph is with the calibrated probability (export refuses otherwise).
    assert with_attributes.metadata["parity"]["max_abs_diff"] <= 1e-5


def test_import_model_registers_a_booster_matching_the_spec(
    cafe: dict[str, Path], with_attributes: pipeline.Outcome, tmp_path: Path
) -> None:
    src = with_attributes.path / LGB_FILE
    version = import_model.import_booster(tmp_path / "reg", src, cafe["spec"], cafe["catalog"], promote=True)
    reg = Registry(tmp_path / "reg")
    assert reg.promoted() == version
    assert reg.metadata(version)["parity"]["max_abs_diff"] <= 1e-5
    # Against the default specification its 68 columns do not fit: refused, naming the difference.
    with pytest.raises(ValueError, match="attr_age_band"):
        import_model.import_booster(tmp_path / "reg2", src)
    # A booster whose columns are unnamed does not say what it computes: refused too.
    x = np.random.default_rng(0).random((200, 5))
    plain = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, label=(x[:, 0] > 0.5)), 5)
    plain.save_model(str(tmp_path / "plain.txt"))
    with pytest.raises(ValueError, match="do not match"):
        import_model.import_booster(tmp_path / "reg2", tmp_path / "plain.txt")


def test_archive_round_trip_trains_on_the_same_rows(sim_dir: Path, tmp_path: Path) -> None:
    """Events archived (in batches, with a crash between a file and its offsets, and an erasure) read
    back as the same events, and train on the same rows as the original log."""
    events = dataset.load_events(sim_dir / "events.jsonl")
    raws = [ev.encode(e) for e in events]
    writer = ArchiveWriter(tmp_path / "archive", "member-events")
    records = [Record(i % 3, i // 3, raw, e) for i, (raw, e) in enumerate(zip(raws, events, strict=True))]
    half = len(records) // 2

    def next_of(rs: list[Record]) -> dict[int, int]:
        return {p: max(r.offset for r in rs if r.partition == p) + 1 for p in range(3)}

    writer.write(records[:half], next_of(records[:half]))
    # A crash after the files of the next batch but before its offsets: resume must not double them.
    writer.write(records[half : half + 100], {})
    resume = writer.next_offsets()
    rest = [r for r in records[half:] if r.offset >= resume[r.partition]]
    writer.write(rest, next_of(records))
    back = read_archive(tmp_path / "archive")
    assert sorted(map(ev.encode, back)) == sorted(raws)
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    offers = load_catalog(sim_dir / "catalog.json")
    a = dataset.build(imp, events, offers)
    b = dataset.build(imp, back, offers)
    np.testing.assert_array_equal(a.X, b.X)
    # Erasure removes every row of the member from the archive.
    gone = events[0].member_id
    assert writer.erase_member(gone)
    assert all(e.member_id != gone for e in read_archive(tmp_path / "archive"))
    assert len(read_archive(tmp_path / "archive")) == sum(e.member_id != gone for e in events)


def test_the_archive_alone_is_a_training_source(sim_dir: Path, tmp_path: Path) -> None:
    """The retraining job's input: impressions and their claims are events in the archive."""
    events = dataset.load_events(sim_dir / "events.jsonl")
    writer = ArchiveWriter(tmp_path / "archive", "member-events")
    writer.write([Record(0, i, ev.encode(e), e) for i, e in enumerate(events)], {0: len(events)})
    (tmp_path / "archive" / "catalog.json").write_text((sim_dir / "catalog.json").read_text())
    src = pipeline.load_source(tmp_path / "archive")
    shown = sum(isinstance(e, ev.Impression) for e in events)
    assert src.kind == "archive" and len(src.impressions) == shown
    assert (
        0
        < src.impressions["label"].sum()
        <= sum(isinstance(e, ev.CouponClaim | ev.BenefitUse | ev.ConsultBooked) for e in events)
    )
    out = pipeline.run(tmp_path / "reg", tmp_path / "archive", promote=False, progress=False, source=src)
    assert out.result["overall"]["model"]["auc"] > 0.6


def test_impressions_keep_their_page_context_through_the_archive(tmp_path: Path) -> None:
    """The storefront's feedback context travels on the impression event, so training from the archive
    alone sees the context serving ranked with (not the defaults)."""
    from features.projection import Context
    from service.feedback import to_event

    ctx = Context(page_type="search", category="coffee", device="ios", channel="web")
    shown = [
        to_event("impression", "m1", "coffee-percent_off-0", "coupon", "r1", 1_760_000_000.0, 0, None, None,
                 "i1", ctx),
        to_event("impression", "m2", "lounge", "benefit", "r2", 1_760_000_100.0, 0, None, None, "i2"),
        to_event("claim", "m1", "coffee-percent_off-0", "coupon", "r1", 1_760_000_050.0, event_id="c1"),
    ]  # fmt: skip
    writer = ArchiveWriter(tmp_path / "archive", "member-events")
    writer.write([Record(0, i, ev.encode(e), e) for i, e in enumerate(shown)], {0: len(shown)})
    imp = byod.impressions_from_events(read_archive(tmp_path / "archive")).sort_values("member_id")
    got = imp[["page_type", "category", "device", "channel", "label"]].astype(object)
    assert got.where(got.notna(), None).values.tolist() == [
        ["search", "coffee", "ios", "web", 1],
        ["home", None, "other", "app", 0],  # sent without a context: the defaults
    ]


def test_context_values_outside_the_vocabulary_are_named_and_rank_as_other(
    cafe: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    imp = pd.read_csv(cafe["impressions"])
    imp["page_type"] = np.where(np.arange(len(imp)) % 2 == 0, "kiosk", "search")
    imp["category"] = "bakery"  # not a category of the operator's catalogue
    (tmp_path / "catalog.json").write_text(cafe["catalog"].read_text())
    imp.to_csv(tmp_path / "imp.csv", index=False)
    with caplog.at_level(logging.WARNING):
        src = pipeline.load_source(tmp_path / "imp.csv")
    assert "kiosk" in caplog.text and "bakery" in caplog.text and "'other'" in caplog.text
    assert set(src.impressions["page_type"]) == {"other", "search"}
    assert set(src.impressions["category"]) == {"other"}
