"""The fairness audit on purpose: a deliberately biased model (harness.biased: high tiers get smaller
coupons) is flagged on tier by the counterfactual audit, the online guard removes the same-offer gap,
and the simulator-trained model passes. Ranking is the service's own (benefits.fairness_run wires it)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from typer.testing import CliRunner

from benefits.cli import app
from benefits.fairness_run import service_ranker
from features.demo_catalog import demo_catalog
from features.offers import Offer
from features.state import Attribute, MemberState, new_state
from harness.biased import biased_model
from harness.testmodel import train_onnx
from service import fairness_guard
from service.catalog import build_snapshot
from service.model import LoadedModel, load_model
from service.ranking import Policy
from service.recommend import member_hash as service_member_hash
from training.fairness import counterfactual, logged
from training.fairness.counterfactual import Sample
from training.fairness.groups import AuditConfig, load_config
from training.fairness.slates import (
    OfferFacts,
    catalogue_facts,
    slate_metrics,
    strictly_worse,
    version_family,
    worse_versions,
)
from training.fairness.sources import from_data_dir
from training.simulate import load_catalog

PAGES = ["home", "category", "product"]
CONFIG = AuditConfig()  # the shipped defaults: value and depth ratio >= 0.9, worse versions net <= 2 %


def coupon(
    offer_id: str, value: float, threshold: float, category: str | None = "beauty", **kw: Any
) -> Offer:
    base: dict[str, Any] = {"kind": "coupon", "subtype": "threshold" if threshold else "no_threshold",
                            "category": category, "title": offer_id, "value": value, "threshold": threshold,
                            "cost": value * 0.5}  # fmt: skip
    base.update(kw)
    return Offer(offer_id=offer_id, **base)


def two_versions() -> list[Offer]:
    """Every category's coupon in a small and a big version (same threshold, one family: a slate shows
    one of them): "same offer, worse price" is possible in every family, the discrimination the guard
    exists for."""
    cats = ["beauty", "fashion", "home", "grocery", "sports", "books", "toys", "pets"]
    return [coupon(f"{c}-{v:02.0f}", v, 99.0, c, family=f"{c}-99") for c in cats for v in (5.0, 20.0)]


@pytest.fixture(scope="module")
def biased(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return biased_model(tmp_path_factory.mktemp("biased"))


@pytest.fixture(scope="module")
def sample(sim_dir: Path) -> Sample:
    categories = sorted({o.category for o in load_catalog(sim_dir / "catalog.json") if o.category})
    return from_data_dir(sim_dir, 50, PAGES, categories, seed=2)


def audit(sample: Sample, offers: list[Offer], model: LoadedModel | None, guard: bool,
          attributes: tuple[str, ...] = ("tier", "paid")) -> dict[str, dict[str, Any]]:  # fmt: skip
    snap = build_snapshot(1, offers, sample.now)
    ranker = service_ranker(snap, model, Policy(fairness_guard=guard), sample.now, 5)
    out = counterfactual.run(sample, list(attributes), offers, ranker, catalogue_facts(offers), CONFIG)
    return {s["attribute"]: s for s in out["attributes"]}


def check(section: dict[str, Any], metric: str) -> dict[str, Any]:
    return next(c for c in section["checks"] if c["metric"] == metric)


# -- per-slate measures -------------------------------------------------------------------------------


def test_slate_measures() -> None:
    facts = catalogue_facts([coupon("a", 10.0, 100.0), coupon("b", 5.0, 0.0), coupon("c", 30.0, 200.0)])
    facts["x"] = OfferFacts("benefit", 15.0, 0.0, "benefit:free_shipping:-")
    values, unknown = slate_metrics(["a", "b", "x", "gone"], facts)
    offered, depth, coupons, benefits, consults = values.tolist()
    assert unknown == 1 and offered == pytest.approx(7.5)  # coupons only: (10 + 5) / 2
    assert depth == pytest.approx(0.1)  # only the coupon with a threshold
    assert (coupons, benefits, consults) == pytest.approx((2 / 3, 1 / 3, 0.0))
    only_benefit, _ = slate_metrics(["x"], facts)
    assert only_benefit[0] != only_benefit[0]  # NaN: no coupon, no offered value


def test_worse_versions_count_only_versions_that_differ() -> None:
    facts = catalogue_facts([coupon("small", 5.0, 99.0), coupon("big", 20.0, 99.0),
                             coupon("easy", 3.0, 49.0), coupon("home", 1.0, 99.0, "home")])  # fmt: skip
    same = worse_versions(["small", "big"], ["small", "big"], facts)
    assert (same.matched, same.worse, same.better) == (1, 0, 0)  # two versions in both slates: no gap
    worse = worse_versions(["small", "home"], ["big"], facts)
    assert (worse.matched, worse.worse, worse.better, worse.net) == (1, 1, 0, 1.0)
    assert worse.value_diff == -15.0
    trade = worse_versions(["easy"], ["big"], facts)  # smaller but easier to reach: not strictly worse
    assert (trade.worse, trade.better) == (0, 0)


def test_family_and_dominance_are_the_guards() -> None:
    offers = demo_catalog(0.0, 120) + two_versions()
    facts = catalogue_facts(offers)
    for o in offers:
        assert version_family(o) == fairness_guard.offer_family(o)
    for a, b in itertools.product(offers[:60], offers[:60]):
        assert strictly_worse(facts[a.offer_id], facts[b.offer_id]) == fairness_guard.strictly_worse(a, b)


def test_log_hash_is_the_services() -> None:
    assert logged.member_hash(b"salt", "m-1") == service_member_hash(b"salt", "m-1")


def test_one_attribute_changes_and_nothing_else() -> None:
    now = 1_760_000_000.0
    base = new_state("m-1")
    base.tier, base.region, base.paid_member, base.paid_expires_ts = "gold", "north", True, now - 86400
    base.attributes = {"segment": Attribute(value="student", ts=1.0, event_id="p"),
                       "kids": Attribute(value=2, ts=1.0, event_id="p")}  # fmt: skip
    other = new_state("m-2")
    other.region, other.attributes = "south", {"segment": Attribute(value="retired")}
    sample = Sample([base, other], [[], []], now)
    before = msgspec.json.encode(base)

    def changed(a: MemberState, b: MemberState) -> set[str]:
        da, db = msgspec.structs.asdict(a), msgspec.structs.asdict(b)
        return {k for k in da if da[k] != db[k]}

    tier = counterfactual.attribute_spec("tier", sample, [])
    assert tier is not None and counterfactual.level_of(base, tier, now) == "gold"
    assert changed(base, counterfactual.with_level(base, tier, "regular", now)) == {"tier"}
    paid = counterfactual.attribute_spec("paid", sample, [])
    assert paid is not None and counterfactual.level_of(base, paid, now) == "no"  # expired yesterday
    assert counterfactual.level_of(counterfactual.with_level(base, paid, "yes", now), paid, now) == "yes"
    region = counterfactual.attribute_spec(
        "region", sample, [coupon("x", 1.0, 0.0, eligibility={"regions": ["east"]})]
    )
    assert region is not None and region.levels == ("east", "north", "south") and not region.ordered
    declared = counterfactual.attribute_spec("declared:segment", sample, [])
    assert declared is not None and declared.levels == ("retired", "student")
    as_retired = counterfactual.with_level(base, declared, "retired", now)
    assert changed(base, as_retired) == {"attributes"} and as_retired.attributes["kids"].value == 2
    assert counterfactual.level_of(as_retired, declared, now) == "retired"
    assert msgspec.json.encode(base) == before  # the member's own state is never touched
    assert counterfactual.attribute_spec("declared:kids", sample, []) is None  # one value only: skipped
    with pytest.raises(ValueError, match="unknown attribute 'age'"):
        counterfactual.attribute_spec("age", sample, [])


# -- the audit on purpose -------------------------------------------------------------------------------


def test_the_biased_model_is_flagged_on_tier_and_the_guard_blocks_it(
    sample: Sample, biased: LoadedModel
) -> None:
    off = audit(sample, two_versions(), biased, guard=False)
    tier = off["tier"]
    assert tier["pass"] is False
    value = check(tier, "offered_value")
    # Gold and diamond get the small versions: about a quarter of what regular and silver members get.
    assert value["pass"] is False and value["group"] in ("gold", "diamond") and value["gap"] < -10
    assert value["versus"] in ("regular", "silver") and value["ratio"] < 0.5
    versions = check(tier, "worse_version_net")
    assert versions["pass"] is False and versions["gap"] > 0.5 and versions["better"] == 0
    assert versions["p_value"] < 1e-6
    assert off["paid"]["pass"] is True  # the model ignores paid membership: no gap there

    on = audit(sample, two_versions(), biased, guard=True)
    tier = on["tier"]
    assert tier["pass"] is True, [c for c in tier["checks"] if c["pass"] is False]
    assert check(tier, "worse_version_net")["worse"] == 0
    assert check(tier, "offered_value")["ratio"] >= 0.99
    assert sum(tier["guard_blocked"].values()) > 0 and tier["guard_blocked"]["regular"] == 0


def test_the_guard_does_not_hide_a_gap_across_families(
    sim_dir: Path, sample: Sample, biased: LoadedModel
) -> None:
    # On the demo catalogue the biased model gives high tiers small no-threshold coupons from other
    # families rather than small versions of the same one: the guard, which compares versions of one
    # family, cannot see it, and the audit still flags the offered value with the guard on.
    offers = load_catalog(sim_dir / "catalog.json")
    for guard in (False, True):
        tier = audit(sample, offers, biased, guard=guard, attributes=("tier",))["tier"]
        value = check(tier, "offered_value")
        assert tier["pass"] is False and value["pass"] is False and value["ratio"] < 0.5, guard
        assert value["group"] in ("gold", "diamond")


def test_an_unbiased_model_passes(sim_dir: Path, sample: Sample, tmp_path: Path) -> None:
    # The project's test model: claims rise with interest, page match, value and tier alike for every
    # offer (no tier x value interaction), so no group should get worse deals.
    path = tmp_path / "model.onnx"
    path.write_bytes(train_onnx(seed=1).SerializeToString())
    model = load_model(path, "unbiased")
    offers = load_catalog(sim_dir / "catalog.json")
    result = audit(sample, offers, model, guard=False, attributes=("tier", "paid", "region"))
    for name in ("tier", "paid", "region"):
        failed = [c for c in result[name]["checks"] if c["pass"] is False]
        assert result[name]["pass"] is True, (name, failed)
    # Every level is measured on the same members in the same contexts.
    assert len(set(result["tier"]["rows"].values())) == 1 and result["tier"]["rows"]["gold"] == 50 * 3
    assert "by_segment" in result["tier"]  # the simulation's segments: gaps within each


# -- thresholds ---------------------------------------------------------------------------------------


def test_thresholds_from_a_file_per_attribute_and_from_flags(tmp_path: Path) -> None:
    path = tmp_path / "fairness.json"
    path.write_text(json.dumps({"min_value_ratio": 0.9, "attributes": {"region": {"min_value_ratio": 0.8}}}))
    config = load_config(path, {"min_depth_ratio": 0.85, "max_exposure_diff": None})
    assert config.for_attribute("tier").min_value_ratio == 0.9
    assert config.for_attribute("region").min_value_ratio == 0.8
    assert config.for_attribute("region").min_depth_ratio == 0.85  # the flag, not overridden per attribute
    path.write_text(json.dumps({"min_value_ratoi": 0.9}))
    with pytest.raises(ValueError, match="min_value_ratoi"):
        load_config(path, {})
    with pytest.raises(ValueError, match="max_worse_version_net"):
        load_config(None, {"max_worse_version_net": 2.0})


# -- the command ----------------------------------------------------------------------------------------


def test_the_command_on_a_simulation(sim_dir: Path, tmp_path: Path) -> None:
    env = {"BENEFITS_REGISTRY_DIR": str(tmp_path / "registry"), "BENEFITS_LOG_LEVEL": "WARNING"}
    out = tmp_path / "report"
    args = ["fairness", "--data", str(sim_dir), "--sample", "30", "--pages", "home,category",
            "--attributes", "tier,paid", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--model", "biased", "--no-guard"], env=env)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert "FAIL" in res.stdout and "counterfactual tier" in " ".join(res.stdout.split())
    report = json.loads((out / "fairness.json").read_text())
    assert report["pass"] is False and report["model"]["version"] == "biased" and report["guard"] is False
    # The simulation's own logged slates, grouped by tier, paid membership and segment.
    assert report["logged"]["source"]["kind"] == "impressions"
    assert {s["attribute"] for s in report["logged"]["attributes"]} >= {"tier", "paid", "segment"}
    page = (out / "fairness.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<script" not in page and 'src="http' not in page

    # No promoted model, unknown attribute, bad threshold file, two sources: errors naming the input.
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 2 and "no promoted model" in res.output
    res = CliRunner().invoke(app, [*args, "--model", "biased", "--attributes", "tier,age"], env=env)
    assert res.exit_code == 2 and "unknown attribute 'age'" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"min_value_ratio": "high"}')
    res = CliRunner().invoke(app, [*args, "--model", "biased", "--config", str(bad)], env=env)
    assert res.exit_code == 2 and "min_value_ratio" in res.output
    res = CliRunner().invoke(app, [*args, "--simulate"], env=env)
    assert res.exit_code == 2 and "one member source" in res.output
