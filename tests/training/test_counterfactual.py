"""Counterfactual evaluation on the simulator against its oracle, the promotion gate, and the command's
refusals of logs it cannot use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benefits.cli import app
from benefits.models_commands import promote_command
from infra.registry import Registry
from infra.settings import Settings
from training import counterfactual as cf
from training import dataset, pipeline
from training.counterfactual_gate import Gate, gate_decision
from training.import_model import import_booster
from training.simulate import load_catalog, simulate_to_dir


@pytest.fixture(scope="module")
def eval_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other members (another seed) than the training simulation's, logged with what the estimators
    need: marginal propensities and every eligible offer's true claim probability."""
    out = tmp_path_factory.mktemp("eval_log")
    simulate_to_dir(out, n_members=400, days=7.0, n_offers=120, seed=4, progress=False, offpolicy_log=True)
    return out


@pytest.fixture(scope="module")
def gate_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller log: enough to tell a model from its inverse."""
    out = tmp_path_factory.mktemp("gate_log")
    simulate_to_dir(out, n_members=150, days=5.0, n_offers=120, seed=5, progress=False, offpolicy_log=True)
    return out


@pytest.fixture(scope="module")
def registry(trained: pipeline.Outcome, sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The trained ("good") version, unpromoted, and a "bad" version that ranks by the *inverse* of the
    claim (LightGBM fitted on flipped labels of the same rows), both as registered ONNX models."""
    reg = Registry(tmp_path_factory.mktemp("cf_registry"))
    reg.models_dir.mkdir(parents=True)
    shutil.copytree(trained.path, reg.version_dir(trained.version))
    imp = pd.read_parquet(sim_dir / "impressions.parquet")
    ts = dataset.build(
        imp, dataset.load_events(sim_dir / "events.jsonl"), load_catalog(sim_dir / "catalog.json")
    )
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 2, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(ts.X, label=1 - ts.y, feature_name=list(ts.spec.names)), 60)
    path = tmp_path_factory.mktemp("bad") / "bad.lgb.txt"
    booster.save_model(str(path))
    import_booster(reg.root, path, catalog=sim_dir / "catalog.json")
    return reg


def _versions(reg: Registry, trained: pipeline.Outcome) -> tuple[str, str]:
    bad = next(v for v in reg.versions() if v != trained.version)
    return trained.version, bad


def _settings(reg: Registry, **kw: Any) -> Settings:
    return Settings(registry_dir=reg.root, **kw)


def test_doubly_robust_interval_contains_the_oracle_value(
    registry: Registry, trained: pipeline.Outcome, eval_log: Path
) -> None:
    """The issue's check: on the simulator the DR estimate of a new model's claim rate is within its
    interval of the oracle's value (the true expected claims per view of the model's greedy slates on
    the logged views, computed from every eligible offer's true claim probability)."""
    out = cf.run(_settings(registry), eval_log, trained.version, "popularity")
    assert out["estimator"].startswith("position-based") and out["views"] > 3000
    for role in ("candidate", "baseline"):
        truth = out[role]["oracle"]["claims_per_view"]
        dr = out[role]["claims_per_view"]["dr"]
        assert dr["ci_low"] <= truth <= dr["ci_high"], (role, dr, truth)
    # Not vacuous: the candidate's interval is a fraction of its value, and every estimator is near it.
    truth = out["candidate"]["oracle"]["claims_per_view"]
    dr = out["candidate"]["claims_per_view"]["dr"]
    assert dr["ci_high"] - dr["ci_low"] < 0.8 * truth, dr
    for est in ("ips", "snips", "dr"):
        assert abs(out["candidate"]["claims_per_view"][est]["estimate"] - truth) < 0.25 * truth, est
    # The learned model's slates are worth more claims than the logging policy's own ...
    logged = out["logging_policy"]["claims_per_view"]
    assert out["candidate"]["oracle"]["claims_per_view"] > logged["ci_high"]
    # ... and the estimators see it: the naive logged rate is far below the candidate's interval.
    assert logged["estimate"] < out["candidate"]["claims_per_view"]["dr"]["ci_low"]
    value = out["candidate"]["value_per_view"]["dr"]
    assert value["ci_low"] <= out["candidate"]["oracle"]["value_per_view"] <= value["ci_high"]


def test_gate_accepts_a_better_model_and_refuses_a_worse_one(
    registry: Registry, trained: pipeline.Outcome, gate_log: Path
) -> None:
    good, bad = _versions(registry, trained)
    settings = _settings(registry)
    registry.promote(bad, reason="test: the bad model is live")
    # The good model beats the live bad one: promoted, the gate's estimate among its checks.
    assert promote_command(settings, good, gate_log) == 0
    assert registry.promoted() == good
    moved = registry.history()[-1]
    assert moved["action"] == "promote" and any("off-policy DR" in c for c in moved["checks"])
    # The bad model against the live good one: refused with the estimate and the margin, pointer kept.
    assert promote_command(settings, bad, gate_log) == 1
    assert registry.promoted() == good
    refusal = registry.history()[-1]
    assert refusal["action"] == "refused" and refusal["version"] == bad
    assert "not above the margin 0" in refusal["reason"] and f"minus the promoted {good}" in refusal["reason"]
    ok, why, result = gate_decision(settings, bad, Gate(gate_log))
    d = result["difference"]["claims_per_view"]["dr"]
    assert not ok and d["ci_high"] < 0 and f"{d['estimate']:+.5f}" in why


def test_training_gate_refuses_promotion_with_the_reason(
    registry: Registry, trained: pipeline.Outcome, sim_dir: Path
) -> None:
    """``benefits train`` with a gate: a version that passes the held-out checks but not the off-policy
    gate stays unpromoted, and the reason (held-out and off-policy) is in its metadata and the history."""
    good, _ = _versions(registry, trained)
    registry.promote(good, reason="test")
    calls: list[str] = []

    def gate(version: str) -> tuple[bool, str]:
        calls.append(version)
        return False, "off-policy DR: test refusal"

    out = pipeline.run(
        registry.root, sim_dir, promote=True, progress=False, min_auc_gain=-1.0, offpolicy_gate=gate
    )
    assert calls == [out.version] and not out.promoted and registry.promoted() == good
    assert out.metadata["promotion"]["eligible"] is False
    assert "off-policy DR: test refusal" in registry.metadata(out.version)["promotion"]["reason"]
    assert registry.history()[-1]["action"] == "not_promoted"


def _byo(tmp_path: Path, sim_dir: Path, **columns: Any) -> Path:
    imp = pd.read_parquet(sim_dir / "impressions.parquet").head(400)
    imp = imp.drop(columns=["propensity"])
    for name, value in columns.items():
        imp[name] = value
    path = tmp_path / "impressions.csv"
    imp.to_csv(path, index=False)
    shutil.copy(sim_dir / "catalog.json", tmp_path / "catalog.json")
    return path


def test_the_command_refuses_logs_it_cannot_use(
    registry: Registry, trained: pipeline.Outcome, sim_dir: Path, tmp_path: Path
) -> None:
    env = {"BENEFITS_REGISTRY_DIR": str(registry.root), "BENEFITS_LOG_LEVEL": "WARNING"}
    run = CliRunner().invoke
    base = ["evaluate", "--policy", trained.version, "--baseline", "popularity"]
    # No propensity column: named.
    res = run(app, [*base, "--logs", str(_byo(tmp_path, sim_dir))], env=env)
    assert res.exit_code == 2 and "no 'propensity' column" in res.output, res.output
    # Zero and missing propensities: counted and the first one named.
    probs = np.full(400, 0.2)
    probs[[3, 7]] = [0.0, np.nan]
    res = run(app, [*base, "--logs", str(_byo(tmp_path, sim_dir, propensity=probs))], env=env)
    text = " ".join(res.output.split())
    assert (
        res.exit_code == 2 and "'propensity' must be a probability in (0, 1]" in text and "2 of 400" in text
    )
    # A usable table (the same rows with their propensities) and its event log: the sequential estimator.
    imp = pd.read_parquet(sim_dir / "impressions.parquet").head(2000)
    imp.to_csv(tmp_path / "impressions.csv", index=False)
    args = [*base, "--logs", str(tmp_path / "impressions.csv"), "--events", str(sim_dir / "events.jsonl")]
    res = run(app, [*args, "--json", "--k", "2"], env=env)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["estimator"] == "sequential" and out["policy"]["k"] == 2
    assert any("sequential" in n for n in out["notes"]) and any("--k 2" in n for n in out["notes"])
    # Versions the registry does not have.
    res = run(app, ["evaluate", "--policy", "nope", "--logs", str(sim_dir)], env=env)
    assert res.exit_code == 2 and "'nope' is not in the registry" in res.output
    lone = Registry(tmp_path / "lone")
    shutil.copytree(trained.path, lone.version_dir(trained.version))
    env["BENEFITS_REGISTRY_DIR"] = str(lone.root)
    res = run(app, [*base[:3], "--baseline", "promoted", "--logs", str(sim_dir)], env=env)
    assert res.exit_code == 2 and "no model is promoted" in res.output


def test_sequential_estimator_from_conditional_propensities_alone() -> None:
    """Without marginal propensities: per slot, the product of the policy's conditional probabilities
    of the logged prefix over the logged conditional propensities (training.counterfactual_policy).
    A softmax policy under slate rules, logged by plain Plackett-Luce: the estimates cover its value."""
    from features import slate
    from training.counterfactual_policy import view_targets
    from training.offpolicy import SlotLog, SlotTarget, view_estimates

    rng = np.random.default_rng(21)
    n, k, views = 8, 3, 6000
    truth = rng.uniform(0.02, 0.4, n)
    cand = slate.Candidates(
        score=np.log(truth) * 2.0,
        pinned=np.zeros(n, dtype=bool),
        kinds=np.arange(n) % 3,
        categories=np.arange(n) % 4,
        families=np.arange(n),
    )
    policy = slate.SlatePolicy(max_per_category=1, min_kinds=2, exploration="softmax", temperature=1.0)
    pi = 0.5 / n + 0.5 * rng.dirichlet(np.full(n, 2.0))  # the logging policy: half uniform
    rows: dict[str, list[np.ndarray]] = {k_: [] for k_ in ("view", "slot", "r", "pl", "pt", "q", "dm")}
    for v in range(views):
        shown = np.argsort(-(np.log(pi) + rng.gumbel(size=n)))[:k]
        pc = pi[shown]
        p_cond = pc / (1.0 - (np.cumsum(pc) - pc))
        vt = view_targets(
            cand, shown.tolist(), p_cond, policy, True, True, truth * 0.8, np.ones(n), np.ones(k), rng
        )
        rows["view"].append(np.full(k, v))
        rows["slot"].append(np.arange(k))
        rows["r"].append((rng.random(k) < truth[shown]).astype(np.float64))
        rows["pl"].append(np.cumprod(p_cond))
        rows["pt"].append(vt.p_target)
        rows["q"].append(truth[shown] * 0.8)
        rows["dm"].append(vt.dm_claims)
    cat = {k_: np.concatenate(v_) for k_, v_ in rows.items()}
    log = SlotLog(cat["view"], cat["slot"], cat["r"], cat["pl"], views)
    est = view_estimates(log, SlotTarget(cat["pt"], cat["q"], cat["dm"]))
    exact = float((slate.sample_marginals(cand, k, policy, rng, 100_000) * truth[:, None]).sum())
    for name in ("ips", "dr"):
        assert est[name].low <= exact <= est[name].high, (name, est[name], exact)


def test_archived_impressions_carry_their_propensity() -> None:
    """The archive (impression events from the storefront's feedback) is an evaluation input: each
    impression row keeps its logged propensity, NaN when it had none (then refused by name)."""
    from features import events as ev
    from training.byod import impressions_from_events

    shown = {"member_id": "m1", "event_ts": 1e9, "request_id": "r1"}
    evs = [
        ev.Impression(event_id="a", offer_id="o1", position=0, propensity=0.25, **shown),  # type: ignore[arg-type]
        ev.Impression(event_id="b", offer_id="o2", position=1, **shown),  # type: ignore[arg-type]
    ]
    df = impressions_from_events(evs)
    assert df["propensity"].iloc[0] == 0.25 and np.isnan(df["propensity"].iloc[1])
    with pytest.raises(cf.EvaluationError, match="1 of 2 are missing"):
        cf.check_propensities(df, "propensity", "archive")
