"""The evaluation report: one self-contained HTML file, plots embedded as base64 PNG.

Sections: headline metrics vs baselines (table and bar chart), per offer family (the model's margins
over popularity and its gap to the oracle, :func:`training.evaluate.by_family`), ROC curves, calibration
(reliability diagram), feature importance (share of gain), per-segment metrics, and the model's metadata
(training window, data hash, code version, parity). Plots are small (low dpi) so that example reports can
live in the repository.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve

_COLORS = {
    "model": "#1f77b4",
    "popularity": "#ff7f0e",
    "random": "#7f7f7f",
    "promoted": "#2ca02c",
    "oracle": "#d62728",
}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _color(name: str) -> str:
    return _COLORS.get(name, "#9467bd")


def plot_metrics(result: dict[str, Any]) -> str:
    names = list(result["overall"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("auc", "ndcg@5"), strict=True):
        vals = [result["overall"][n][metric] for n in names]
        ax.bar(names, vals, color=[_color(n) for n in names])
        lo = min(v for v in vals if np.isfinite(v)) if any(np.isfinite(v) for v in vals) else 0.0
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=30)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    return _png(fig)


def plot_roc(y: np.ndarray, scores: dict[str, np.ndarray]) -> str:
    fig, ax = plt.subplots(figsize=(4, 4))
    if len(np.unique(y)) == 2:
        for name, s in scores.items():
            fpr, tpr, _ = roc_curve(y, s)
            # Thin the curve: a few hundred points are enough for a small plot.
            step = max(1, len(fpr) // 400)
            ax.plot(fpr[::step], tpr[::step], label=name, color=_color(name), lw=1.2)
    ax.plot([0, 1], [0, 1], ls=":", color="#999")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=8)
    ax.set_title("ROC (held-out)")
    return _png(fig)


def plot_calibration(result: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(4, 4))
    top = 0.0
    for name, m in result["overall"].items():
        bins = m["calibration"]["bins"]
        if name == "random" or not bins:
            continue
        xs = [b["pred"] for b in bins]
        ys = [b["obs"] for b in bins]
        top = max(top, *xs, *ys)
        ece = m["calibration"]["ece"]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{name} (ECE {ece:.4f})", color=_color(name))
    ax.plot([0, top], [0, top], ls=":", color="#999")
    ax.set_xlabel("mean predicted")
    ax.set_ylabel("observed rate")
    ax.legend(fontsize=7)
    ax.set_title("calibration (quantile bins)")
    return _png(fig)


def plot_importance(importance: list[tuple[str, float]], top: int = 20) -> str:
    items = importance[:top][::-1]
    fig, ax = plt.subplots(figsize=(5, 0.22 * len(items) + 0.8))
    ax.barh([k for k, _ in items], [v for _, v in items], color=_COLORS["model"])
    ax.set_xlabel("share of total gain")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("feature importance")
    return _png(fig)


def plot_segments(result: dict[str, Any]) -> str | None:
    segs = result.get("segments") or {}
    if not segs:
        return None
    names = [n for n in next(iter(segs.values())) if n != "random"]
    seg_names = list(segs)
    x = np.arange(len(seg_names))
    w = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(8, 3))
    for i, n in enumerate(names):
        ax.bar(x + i * w, [segs[s][n]["auc"] for s in seg_names], w, label=n, color=_color(n))
    ax.set_xticks(x + w * (len(names) - 1) / 2, seg_names, rotation=20, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUC")
    ax.legend(fontsize=7, ncol=len(names))
    ax.set_title("AUC per segment")
    return _png(fig)


def plot_families(families: dict[str, Any]) -> str | None:
    if not families:
        return None
    names = [n for n in ("model", "popularity", "oracle") if n in next(iter(families.values()))["scorers"]]
    fams = list(families)
    x = np.arange(len(fams))
    w = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(8, 3))
    for i, n in enumerate(names):
        ax.bar(x + i * w, [families[f]["scorers"][n]["auc"] for f in fams], w, label=n, color=_color(n))
    ax.set_xticks(x + w * (len(names) - 1) / 2, fams, rotation=20, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUC")
    ax.legend(fontsize=7, ncol=len(names))
    ax.set_title("AUC per offer family")
    return _png(fig)


def families_html(families: dict[str, Any]) -> str:
    """The per-family section: AUC and claim rate @ top share per scorer, margins over popularity."""
    if not families:
        return ""
    from training.evaluate import TOP_SHARE

    names = [
        n
        for n in ("model", "popularity", "oracle", "promoted")
        if n in next(iter(families.values()))["scorers"]
    ]
    head = "".join(f"<th>{html.escape(n)} AUC</th>" for n in names)
    head += "<th>model - popularity AUC (95% CI)</th>"
    head += "".join(f"<th>{html.escape(n)} claim@{TOP_SHARE:.0%}</th>" for n in names)
    rows = []
    for fam, e in families.items():
        sc, pop = e["scorers"], e.get("margins", {}).get("popularity")
        margin = (
            f"{pop['auc']:+.4f} ({pop['auc_ci'][0]:+.4f}, {pop['auc_ci'][1]:+.4f})"
            if pop and np.isfinite(pop["auc"])
            else "-"
        )
        rows.append(
            f"<tr><td>{html.escape(fam)}</td><td>{e['rows']:,}</td><td>{e['claims']:,}</td>"
            f"<td>{_fmt(e['claim_rate'])}</td>"
            + "".join(f"<td>{_fmt(sc[n]['auc'])}</td>" for n in names)
            + f"<td>{margin}</td>"
            + "".join(f"<td>{_fmt(sc[n]['claim_rate@top'])}</td>" for n in names)
            + "</tr>"
        )
    img = plot_families(families)
    return (
        "<h2>Per offer family</h2><p>Held-out rows grouped by the offer's family (its kind when it has "
        f"none). AUC inside a family: which shown members claim; claim@{TOP_SHARE:.0%}: the observed claim "
        f"rate of the {TOP_SHARE:.0%} rows a scorer ranks highest. Popularity gives every row of a one-offer "
        "family the same score (AUC 0.5): the margin is what the member's features add.</p>"
        f"<table><tr><th>family</th><th>rows</th><th>claims</th><th>claim rate</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
        + (f'<img src="data:image/png;base64,{img}">' if img else "")
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if np.isfinite(v) else "-"
    return html.escape(str(v))


def render(
    title: str,
    result: dict[str, Any],
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    importance: list[tuple[str, float]],
    metadata: dict[str, Any],
    notes: list[str] | None = None,
) -> str:
    """The whole report as one HTML string."""
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(m['auc'])}</td><td>{_fmt(m['logloss'])}</td>"
        f"<td>{_fmt(m['ndcg@5'])}</td><td>{_fmt(m['calibration']['ece'])}</td><td>{_fmt(m['mean_pred'])}</td></tr>"
        for n, m in result["overall"].items()
    )
    margins = "".join(
        f"<tr><td>model vs {html.escape(n)}</td><td>{m['auc']:+.4f}</td><td>{m['logloss']:+.4f}</td>"
        f"<td>{m['ndcg@5']:+.4f}</td></tr>"
        for n, m in result.get("margins", {}).items()
    )
    seg_html = ""
    segs = result.get("segments") or {}
    if segs:
        head = "".join(
            f"<th>{html.escape(n)} AUC</th><th>{html.escape(n)} NDCG@5</th>"
            for n in next(iter(segs.values()))
        )
        body = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{next(iter(v.values()))['n']}</td>"
            + "".join(f"<td>{_fmt(m['auc'])}</td><td>{_fmt(m['ndcg@5'])}</td>" for m in v.values())
            + "</tr>"
            for s, v in segs.items()
        )
        seg_plot = plot_segments(result)
        seg_img = f'<img src="data:image/png;base64,{seg_plot}">' if seg_plot else ""
        seg_html = (
            f"<h2>Per segment</h2>{seg_img}<table><tr><th>segment</th><th>rows</th>{head}</tr>{body}</table>"
        )
    meta_view = {k: v for k, v in metadata.items() if k not in ("feature_names", "metrics", "importance")}
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in (notes or []))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
pre {{ background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }}
img {{ margin: 0.3em; vertical-align: top; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<ul>{notes_html}</ul>
<h2>Held-out metrics vs baselines</h2>
<table><tr><th>scorer</th><th>AUC</th><th>log loss</th><th>NDCG@5</th><th>ECE</th>
<th>mean pred</th></tr>{rows}</table>
<table><tr><th>margin</th><th>AUC</th><th>log loss (+ = model lower, better)</th><th>NDCG@5</th></tr>
{margins}</table>
<img src="data:image/png;base64,{plot_metrics(result)}">
{families_html(result.get("families") or {})}
<h2>ROC and calibration</h2>
<img src="data:image/png;base64,{plot_roc(y, scores)}">
<img src="data:image/png;base64,{plot_calibration(result)}">
<h2>Feature importance</h2>
<img src="data:image/png;base64,{plot_importance(importance)}">
{seg_html}
<h2>Model metadata</h2>
<pre>{html.escape(json.dumps(meta_view, indent=2, sort_keys=True, default=str))}</pre>
</body></html>
"""
