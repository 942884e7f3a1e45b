"""The fairness report: JSON (the numbers) and one self-contained HTML file (plots as base64 PNG, no
external scripts or styles), both from the same dictionary."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

from features.offers import OFFER_KINDS

_KIND_COLORS = {"coupon": "#1f77b4", "benefit": "#2ca02c", "consult": "#9467bd"}
_LABELS = {
    "offered_value": "offered value (mean coupon value)",
    "discount_depth": "discount depth (value / threshold)",
    "worse_version_net": "worse version of the same offer (net of better)",
    **{f"exposure_{k}": f"exposure: {k} share of slots" for k in OFFER_KINDS},
}


def summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per (audit, attribute): the verdict and the checks that failed."""
    out = []
    for audit in ("counterfactual", "logged"):
        part = report.get(audit)
        if not part:
            continue
        for s in part["attributes"]:
            failed = [c["metric"] for c in s["checks"] if c["pass"] is False]
            value = next(c for c in s["checks"] if c["metric"] == "offered_value")
            out.append({
                "audit": audit, "attribute": s["attribute"], "pass": s["pass"], "failed": failed,
                "offered_value_gap": value.get("gap"), "offered_value_ratio": value.get("ratio"),
                "group": value.get("group"), "versus": value.get("versus"),
            })  # fmt: skip
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def plot_attribute(section: dict[str, Any]) -> str:
    """Offered value and discount depth per level (the worst pair's gap annotated), exposure by kind."""
    levels = [lv for lv in section["levels"] if section["rows"].get(lv, 0) > 0]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, metric in zip(axes[:2], ("offered_value", "discount_depth"), strict=True):
        vals = [_num(section["by_group"][metric].get(lv)) for lv in levels]
        check = next(c for c in section["checks"] if c["metric"] == metric)
        colors = []
        for lv in levels:
            bad = check.get("pass") is False and lv == check.get("group")
            colors.append("#d62728" if bad else "#7f7f7f" if lv in section["not_judged"] else "#1f77b4")
        ax.bar(levels, vals, color=colors)
        for i, v in enumerate(vals):
            if math.isfinite(v):
                ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        title = _LABELS[metric]
        if check.get("ratio") is not None:
            title += f"\nworst {check['group']} vs {check['versus']}: x{check['ratio']:.2f}"
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax = axes[2]
    bottom = [0.0] * len(levels)
    for kind in OFFER_KINDS:
        vals = [_num(section["by_group"][f"exposure_{kind}"].get(lv)) for lv in levels]
        vals = [v if math.isfinite(v) else 0.0 for v in vals]
        ax.bar(levels, vals, bottom=bottom, label=kind, color=_KIND_COLORS.get(kind))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylim(0, 1.0)
    ax.set_title("exposure by offer kind", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    return _png(fig)


def plot_segments(section: dict[str, Any]) -> str | None:
    """Offered value per level within each segment (the issue's probe compared tiers inside a segment)."""
    per = section.get("by_segment")
    if not per:
        return None
    levels = [lv for lv in section["levels"] if section["rows"].get(lv, 0) > 0]
    fig, ax = plt.subplots(figsize=(6, 3))
    for seg, metrics in sorted(per.items()):
        ax.plot(levels, [_num(metrics["offered_value"].get(lv)) for lv in levels], marker="o", label=seg)
    ax.set_ylabel("mean coupon value", fontsize=8)
    ax.set_title(f"{section['attribute']}: offered value within each segment", fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _png(fig)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.4g}"
    return html.escape(str(x))


def _verdict(p: bool | None) -> str:
    if p is None:
        return '<span class="na">not judged</span>'
    return '<span class="ok">pass</span>' if p else '<span class="bad">FAIL</span>'


def _checks_table(section: dict[str, Any]) -> str:
    rows = []
    for c in section["checks"]:
        test = {"ratio": "ratio ≥", "abs_diff": "|gap| ≤", "net_share": "net ≤"}[c["test"]]
        extra = ""
        if c["metric"] == "worse_version_net" and "matched_families" in c:
            extra = (f" (worse in {c['worse']}, better in {c['better']} of {c['matched_families']} shared "
                     f"families; sign test p={c['p_value']:.2g})")  # fmt: skip
        rows.append(
            f"<tr><td>{_LABELS.get(c['metric'], c['metric'])}</td><td>{_fmt(c.get('group'))}</td>"
            f"<td>{_fmt(c.get('versus'))}</td><td>{_fmt(c.get('group_value'))}</td>"
            f"<td>{_fmt(c.get('versus_value'))}</td><td>{_fmt(c.get('gap'))}{extra}</td>"
            f"<td>{_fmt(c.get('ratio'))}</td><td>{test} {_fmt(c.get('threshold'))}</td>"
            f"<td>{_verdict(c['pass'])}{_fmt(c.get('note')) if c.get('note') else ''}</td></tr>"
        )
    head = ("<tr><th>measure</th><th>group</th><th>versus</th><th>group's value</th><th>versus value</th>"
            "<th>signed gap</th><th>ratio</th><th>threshold</th><th>verdict</th></tr>")  # fmt: skip
    return f"<table>{head}{''.join(rows)}</table>"


def _section_html(section: dict[str, Any], audit: str) -> str:
    rows = ", ".join(f"{lv}: {n}" for lv, n in section["rows"].items())
    alt = html.escape(section["attribute"])
    notes = ""
    if section["not_judged"]:
        notes += f"; not judged (too few rows): {html.escape(', '.join(section['not_judged']))}"
    if "guard_blocked" in section:
        notes += f"; offers the guard withheld per level: {html.escape(json.dumps(section['guard_blocked']))}"
    parts = [
        f"<h3>{html.escape(audit)} · {html.escape(section['attribute'])} — {_verdict(section['pass'])}</h3>",
        f"<p>rows per level: {html.escape(rows)}{notes}</p>",
        _checks_table(section),
        f'<img alt="{alt}" src="data:image/png;base64,{plot_attribute(section)}">',
    ]
    # Within-segment lines where they say most: the counterfactual's ordered attributes (the probe
    # compared tiers inside a segment). The numbers of every section are in the JSON.
    seg = plot_segments(section) if audit == "counterfactual" and section["ordered"] else None
    if seg:
        parts.append(f'<img alt="per segment" src="data:image/png;base64,{seg}">')
        worst = section.get("segment_offered_value") or []
        if worst:
            w = worst[0]
            parts.append(
                f"<p>worst within a segment (reported, not judged): {html.escape(w['segment'])}, "
                f"{html.escape(w['group'])} vs {html.escape(w['versus'])}: "
                f"{w['gap']:+.3g} (x{w['ratio']:.2f})</p>"
            )
    return "\n".join(parts)


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}.ok{color:#137333;font-weight:bold}.bad{color:#c5221f;font-weight:bold}
.na{color:#777}code{background:#f6f6f6;padding:0 3px}img{display:block;margin:.4em 0}"""

_HOW_TO_READ = """<h2>How to read it</h2><ul>
<li><b>Counterfactual</b>: the same sampled members in the same contexts, ranked by the service's own
ranking again with only one attribute changed (every member as every tier, as paid and not paid, in every
region). A gap here is caused by that attribute alone, through the model or the catalogue's rules.</li>
<li><b>Logged</b>: the slates members were actually shown, grouped by their attribute. Groups differ in
much more than the attribute (what they browse, when), so a logged gap is an observation, not a cause.</li>
<li><b>Signed gap</b> = group &minus; versus. For tier and paid membership <i>group</i> is the higher one: a
negative gap means loyal or paying members got the worse deal (大数据杀熟). For region and declared
attributes it is the worst-off level against the best-off one.</li>
<li><b>Worse version of the same offer</b>: of the offer families both groups were shown, the share where
the higher group got a strictly worse version (lower value, or a higher threshold) minus the share where it
got a strictly better one; it fails only when that net share is over the threshold and a one-sided sign test
says the direction is not chance. The online guard (<code>BENEFITS_FAIRNESS_GUARD_ENABLED</code>) forbids
worse versions outright; it does not change which families a model prefers, so an offered-value gap can
remain with the guard on.</li>
<li>Thresholds are the operator's (<code>benefits fairness --config FILE</code> or flags); a measure with
no threshold is reported, not judged.</li></ul>"""


def write_html(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    model_name = str(report["model"].get("version") or "none (logged slates only)")
    lines = [
        f"<tr><td>{html.escape(s['audit'])}</td><td>{html.escape(s['attribute'])}</td>"
        f"<td>{_verdict(s['pass'])}</td><td>{html.escape(', '.join(s['failed']) or '-')}</td>"
        f"<td>{_fmt(s['group'])} vs {_fmt(s['versus'])}</td><td>{_fmt(s['offered_value_gap'])}</td>"
        f"<td>{_fmt(s['offered_value_ratio'])}</td></tr>"
        for s in report["summary"]
    ]
    sections = []
    for audit in ("counterfactual", "logged"):
        part = report.get(audit)
        if part:
            src = html.escape(json.dumps(part.get("source", {}), default=str))
            sections.append(f"<h2>{audit.capitalize()} audit</h2><p>source: <code>{src}</code></p>")
            sections += [_section_html(s, audit) for s in part["attributes"]]
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>Fairness report</title>
<style>{_STYLE}</style></head><body>
<h1>Fairness report — {_verdict(report["pass"])}</h1>
<p>model <code>{html.escape(model_name)}</code> · guard {"on" if report["guard"] else "off"} ·
top {report["k"]} per slate · generated {html.escape(report["generated_at"])}</p>
<table><tr><th>audit</th><th>attribute</th><th>verdict</th><th>failed checks</th>
<th>offered value: worst pair</th><th>signed gap</th><th>ratio</th></tr>{"".join(lines)}</table>
{_HOW_TO_READ}
{"".join(sections)}
</body></html>"""
    path.write_text(body)
