"""``benefits train``: data -> point-in-time rows -> LightGBM -> evaluation -> report -> ONNX -> registry.

Inputs (``data``, read by :mod:`training.sources`): a simulation directory written by ``benefits
simulate``; a bring-your-own impressions table (CSV/Parquet) with ``catalog.json`` beside it (or
``--catalog``), optionally a members table, an event log (JSONL or an archive directory) and a feature
specification (formats: :mod:`training.byod` and the README's "Bring your own data"); or an archive
directory written by ``benefits archive`` alone (impressions and claims are events in it).

Rows are built as of each impression's time (:mod:`training.dataset`), split by time (or by member),
trained with early stopping (objective ``binary`` or ``lambdarank``), calibrated on the validation
slice, evaluated on the held-out slice against random, popularity, the currently promoted model and
(when known) the true probabilities, exported to ONNX with a parity gate, and written to the
registry as ``models/VERSION/`` with ``metadata.json`` and ``report.html``. With ``promote`` the new
version is promoted only when, on the same held-out rows, it beats the popularity baseline and the
currently promoted model by at least ``promotion_min_auc_gain`` AUC (:func:`promotion_decision`); else it
stays registered, unpromoted, and the reason is printed, logged, kept in its metadata and in the
registry's promotion history. A promoted model that cannot be scored on those rows (another feature
schema, a broken file) is no comparison: then the new version waits for ``benefits promote``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from features import calibration as calibrate
from features.calibration import Method
from features.projection import DEFAULT_SPEC
from features.spec import FeatureSpec, load_spec, spec_mismatch
from infra.registry import METADATA_FILE, Registry
from training import byod, dataset, evaluate, export, report, train
from training.sources import Source, load_source

__all__ = ["Outcome", "Source", "load_source", "promotion_decision", "run", "train_command"]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    version: str
    path: Path
    metadata: dict[str, Any]
    result: dict[str, Any]
    promoted: bool
    seconds: dict[str, float]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def promoted_scores(
    registry: Registry, X: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC
) -> tuple[str | None, np.ndarray | None]:
    """Scores of the currently promoted model on ``X`` (None when none or built for another spec)."""
    version = registry.promoted()
    if version is None:
        return None, None
    try:
        data = registry.model_path(version).read_bytes()
        sess = export.session(data)
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        why = spec_mismatch(meta, spec)
        if why is not None:
            log.warning("promoted model %s not compared: %s", version, why)
            return version, None
        return version, export.onnx_predict(sess, X)
    except Exception as exc:  # a broken promoted model must not stop training a replacement
        log.warning("cannot score promoted model %s: %s", version, exc)
        return version, None


#: Default of the ``promotion_min_auc_gain`` setting: held-out AUC a new model must gain over the
#: promoted one (on the same rows) to replace it automatically.
MIN_AUC_GAIN = 0.002


def promotion_decision(
    result: dict[str, Any], promoted_version: str | None, compared: bool, min_auc_gain: float
) -> tuple[bool, str]:
    """(promote?, why) for a model evaluated as ``result`` (``training.evaluate.evaluate``)."""
    margins = result.get("margins", {})
    pop = margins.get("popularity", {}).get("auc")
    if pop is None or not pop > 0:
        return (
            False,
            f"it does not beat popularity on held-out AUC ({pop if pop is not None else float('nan'):+.4f})",
        )
    if promoted_version is None:
        return True, f"no model promoted yet; it beats popularity by {pop:+.4f} held-out AUC"
    if not compared or "promoted" not in margins:
        return False, (
            f"the promoted model {promoted_version} could not be scored on the same held-out rows; "
            "compare by hand and use benefits promote"
        )
    gain = float(margins["promoted"]["auc"])
    if not gain >= min_auc_gain:
        return False, (
            f"it beats the promoted {promoted_version} by {gain:+.4f} AUC on the same held-out rows, "
            f"less than the required {min_auc_gain:g}"
        )
    return True, (
        f"it beats the promoted {promoted_version} by {gain:+.4f} AUC (required {min_auc_gain:g}) and "
        f"popularity by {pop:+.4f} on the same held-out rows"
    )


def run(
    registry_dir: Path,
    data: Path,
    events: Path | None = None,
    promote: bool = False,
    progress: bool = True,
    params: dict[str, Any] | None = None,
    title: str | None = None,
    source: Source | None = None,
    min_auc_gain: float = MIN_AUC_GAIN,
    spec: FeatureSpec | None = None,
    *,
    catalog: Path | None = None,
    members: Path | None = None,
    history: byod.History = "both",
    split_by: Literal["time", "member"] = "time",
    calibration: Method = "platt",
    objective: train.Objective = "binary",
    offpolicy_gate: Callable[[str], tuple[bool, str]] | None = None,
) -> Outcome:
    """The whole pipeline; returns the registered version and its evaluation. ``offpolicy_gate`` (the
    version -> (pass, why)) is asked before an automatic promotion, after the held-out checks pass.

    ``objective`` ``lambdarank`` ranks the rows of each request (LambdaMART); its score is calibrated into
    P(claim) on the validation slice (Platt unless ``calibration`` says isotonic; ``none`` is refused), so
    the served output stays a probability and p x value - cost still holds."""
    if objective == "lambdarank" and calibration == "none":
        raise ValueError("lambdarank scores are not probabilities: use --calibration platt or isotonic")
    secs: dict[str, float] = {}
    t = time.perf_counter()
    src = source or load_source(data, events, catalog=catalog, members=members, history=history, spec=spec)
    secs["load"] = time.perf_counter() - t

    t = time.perf_counter()
    spec = src.spec
    ts = dataset.build(src.impressions, src.events, src.offers, progress=progress, spec=spec)
    secs["build"] = time.perf_counter() - t
    if len(ts) == 0:
        raise byod.DataError(
            f"no impressions to train on in {src.description} "
            "(rows of offers not in the catalogue are dropped)"
        )
    y, tsec, groups, frame = ts.y, ts.ts, ts.groups, ts.frame

    t = time.perf_counter()
    if split_by == "member":
        split = train.member_split(frame["member_id"].to_numpy())
    else:
        split = train.time_split(tsec)
    fit = train.train_binary(
        ts.X, y, split, params=params, feature_names=spec.names, objective=objective, groups=groups
    )
    secs["train"] = time.perf_counter() - t

    t = time.perf_counter()
    booster = export.float32_thresholds(fit.booster)
    te = split.test
    registry = Registry(registry_dir)
    offers_col = frame["offer_id"].to_numpy()
    raw_test = np.asarray(booster.predict(ts.X[te]), dtype=np.float64)
    binary = objective == "binary"
    calib = (
        calibrate.fit(
            np.asarray(booster.predict(ts.X[split.valid])), y[split.valid], calibration, probabilities=binary
        )
        if split.valid.any()
        else None
    )
    if calib is None and not binary:
        raise byod.DataError("no validation rows with both outcomes to calibrate the lambdarank score on")
    # A ranking score is not a probability: it has no calibration error of its own to report.
    ece_before = evaluate.calibration(y[te], raw_test)["ece"] if binary else None
    scores: dict[str, np.ndarray] = {
        "model": calib.apply(raw_test) if calib is not None else raw_test,
        "popularity": evaluate.popularity(offers_col[split.train], y[split.train], offers_col[te]),
        "random": evaluate.random_scores(int(te.sum()), float(y[split.train].mean())),
    }
    prev_version, prev = promoted_scores(registry, ts.X[te], spec)
    if prev is not None:
        scores["promoted"] = prev
    if "true_p" in frame.columns and frame["true_p"].notna().all():
        scores["oracle"] = frame["true_p"].to_numpy(dtype=np.float64)[te]
    segments = frame["segment"].astype(str).to_numpy()[te] if "segment" in frame.columns else None
    result = evaluate.evaluate(y[te], groups[te], scores, segments)
    result["families"] = evaluate.by_family(y[te], scores, evaluate.offer_groups(src.offers, offers_col[te]))
    ece_after = result["overall"]["model"]["calibration"]["ece"]
    calib_meta: dict[str, Any] = {
        "method": calib.method if calib is not None else "none",
        "fitted_on": "valid",
        "test_ece_before": ece_before,
        "test_ece_after": ece_after,
        **({"map": calib.as_dict()} if calib is not None else {}),
    }
    secs["evaluate"] = time.perf_counter() - t
    log.info("held-out: %s", evaluate.summary_line(result))

    t = time.perf_counter()
    version = export.new_version(booster.model_to_string())
    model_bytes, parity = export.export_model(
        booster, ts.X[te] if te.any() else ts.X, version, spec=spec, calibration=calib
    )
    secs["export"] = time.perf_counter() - t

    decision = promotion_decision(result, prev_version, prev is not None, min_auc_gain)
    importance = train.feature_importance(booster)
    windows = {
        name: dict(zip(("start", "end"), map(_iso, split.window(tsec, m)), strict=True))
        | {"rows": int(m.sum()), "positives": int(y[m].sum())}
        for name, m in (("train", split.train), ("valid", split.valid), ("test", split.test))
    }
    metadata: dict[str, Any] = {
        **export.version_metadata(version, spec),
        "objective": objective,
        "calibration": calib_meta,
        "split": split_by,
        "training_window": windows,
        "data": {
            "kind": src.kind,
            "source": src.description,
            "hash": dataset.data_hash(src.files),
            "rows": len(ts),
            "requests": len(np.unique(groups)),
            "events": len(src.events),
            "offers": len(src.offers),
            # Rows shown while the member had opted out are not trained on (training.consent_filter).
            "consent": ts.consent.as_dict(),
        },
        "code_version": export.code_version(),
        "parity": {"max_abs_diff": parity, "tolerance": export.PARITY_TOLERANCE, "rows": export.PARITY_ROWS},
        "best_iteration": fit.best_iteration,
        "params": fit.params,
        "metrics": {
            n: {k: v for k, v in m.items() if k != "calibration"} | {"ece": m["calibration"]["ece"]}
            for n, m in result["overall"].items()
        },
        "margins": result.get("margins", {}),
        "segments": result.get("segments", {}),
        "families": result["families"],
        "compared_with_promoted": prev_version if prev is not None else None,
        "promotion": dict(zip(("eligible", "reason"), decision, strict=True)),
        "importance": importance[:25],
        "seconds": secs,
    }
    notes = [
        f"data: {src.kind} ({src.description}), {len(ts):,} impressions, "
        f"{metadata['data']['requests']:,} requests",
        *(
            [
                f"consent: {ts.consent.rows_dropped:,} impression rows of {ts.consent.members_opted_out:,} "
                "members shown while they had opted out were left out"
            ]
            if ts.consent.rows_dropped
            else []
        ),
        (
            f"split by time: train {windows['train']['start']} .. {windows['train']['end']}, "
            f"test {windows['test']['start']} .. {windows['test']['end']} ({windows['test']['rows']:,} rows)"
            if split_by == "time"
            else f"split by member: test members never seen in training ({windows['test']['rows']:,} rows)"
        ),
        f"LightGBM {objective}, {fit.best_iteration} trees (early stopping on the validation slice"
        f"{' by NDCG@5' if not binary else ''})",
        (
            f"calibration ({calib_meta['method']}, fitted on the validation slice): test ECE "
            f"{ece_before:.4f} before, {ece_after:.4f} after"
            if ece_before is not None
            else f"calibration ({calib_meta['method']}, fitted on the validation slice) turns the "
            f"{objective} score into P(claim), so p x value - cost holds: test ECE {ece_after:.4f}"
        ),
        f"ONNX parity: max abs diff {parity:.2e} (tolerance {export.PARITY_TOLERANCE:g})",
        *result.get("notes", []),
    ]
    html_text = report.render(title or f"Model {version}", result, y[te], scores, importance, metadata, notes)
    path = export.register(registry, version, model_bytes, booster, metadata, html_text)

    promoted = False
    if promote:
        eligible, why = decision
        if eligible and offpolicy_gate is not None:
            # Counterfactual check on logged slates (training.counterfactual_gate.gate_decision): the held-out
            # AUC says the model ranks better, this says its slates would win more claims.
            passed, gate_why = offpolicy_gate(version)
            eligible, why = passed, f"{why}; {gate_why}"
            metadata["promotion"] = {"eligible": eligible, "reason": why}
            _rewrite_metadata(registry, version, metadata)
        if eligible:
            registry.promote(
                version, action="auto_promote", reason=why, checks=[f"export parity {parity:.1e}"]
            )
            promoted = True
        else:
            registry.record("not_promoted", version, previous=prev_version, reason=why)
            log.warning("not promoting %s: %s", version, why)
    log.info("registered %s at %s%s", version, path, " (promoted)" if promoted else "")
    return Outcome(version, path, metadata, result, promoted, secs)


def _plain(o: Any) -> Any:
    return o.item() if hasattr(o, "item") else str(o)  # numpy scalars; anything else as text


def _rewrite_metadata(registry: Registry, version: str, metadata: dict[str, Any]) -> None:
    """Replace a registered version's metadata.json (write and rename: readers see old or new)."""
    path = registry.version_dir(version) / METADATA_FILE
    tmp = path.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=_plain))
    os.replace(tmp, path)


def train_version(registry_dir: Path, data: Path, events: Path | None = None, promote: bool = True) -> str:
    """Train, export and register; return the new version (for the demo and scripts)."""
    return run(registry_dir, data, events, promote=promote, progress=False).version


@dataclass
class TrainOptions:
    """What ``benefits train`` passes beyond the data (see the CLI's help)."""

    catalog: Path | None = None
    members: Path | None = None
    spec: Path | None = None
    history: byod.History = "both"
    split: Literal["time", "member"] = "time"
    calibration: Method = "platt"
    params: dict[str, Any] = field(default_factory=dict)
    objective: train.Objective = "binary"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("history", self.history, ("both", "events", "labels")),
            ("split", self.split, ("time", "member")),
            ("calibration", self.calibration, ("platt", "isotonic", "none")),
            ("objective", self.objective, train.OBJECTIVES),
        ):
            if value not in allowed:
                raise ValueError(f"--{name} {value!r} is not one of {list(allowed)}")
        if self.params.get("objective", self.objective) != self.objective:
            raise ValueError(f"--param objective={self.params['objective']}: use --objective instead")
        if self.objective == "lambdarank" and self.calibration == "none":
            raise ValueError("--objective lambdarank needs --calibration platt or isotonic")


def parse_params(path: Path | None, pairs: list[str]) -> dict[str, Any]:
    """LightGBM parameters from a JSON object file, then KEY=VALUE pairs (values parsed as JSON when
    they parse, e.g. numbers and booleans, else kept as text)."""
    out: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"--params {path}: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of LightGBM parameters")
        out.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def train_command(
    settings: Any,
    data: Path,
    events: Path | None,
    promote: bool,
    options: TrainOptions | None = None,
    offpolicy_logs: Path | None = None,
) -> str:
    """Entry point of ``benefits train`` (see the module docstring). Returns the version.

    ``offpolicy_logs`` (else the ``promotion_offpolicy_logs`` setting) adds the off-policy promotion
    gate (:func:`training.counterfactual_gate.gate_decision`)."""
    o = options or TrainOptions()
    gate = None
    logs = offpolicy_logs or settings.promotion_offpolicy_logs
    if promote and logs is not None:
        from training.counterfactual_gate import Gate, gate_decision

        spec = Gate(Path(logs), settings.promotion_offpolicy_margin, settings.promotion_offpolicy_estimator)

        def gate(version: str) -> tuple[bool, str]:
            ok, why, _ = gate_decision(settings, version, spec)
            return ok, why

    out = run(
        Path(settings.registry_dir),
        data,
        events,
        promote=promote,
        progress=True,
        params=o.params or None,
        # The settings' programme configuration: the lifecycle columns are computed under it (and the
        # spec's hash covers it), as the service computes them.
        spec=load_spec(o.spec).with_lifecycle(settings.lifecycle),
        catalog=o.catalog,
        members=o.members,
        history=o.history,
        split_by=o.split,
        calibration=o.calibration,
        objective=o.objective,
        min_auc_gain=settings.promotion_min_auc_gain,
        offpolicy_gate=gate,
    )
    m = out.result["overall"]
    lines = [f"model {out.version} -> {out.path}{' (promoted)' if out.promoted else ''}"]
    if promote:
        verdict = "promoted" if out.promoted else "not promoted"
        lines.append(f"  {verdict}: {out.metadata['promotion']['reason']}")
    for name, met in m.items():
        lines.append(
            f"  {name:<11} auc {met['auc']:.4f}  logloss {met['logloss']:.4f}  ndcg@5 {met['ndcg@5']:.4f}"
            f"  ece {met['calibration']['ece']:.4f}"
        )
    lines.extend(evaluate.family_lines(out.result.get("families", {})))
    lines.extend(f"  note: {n}" for n in out.result.get("notes", []))
    cal = out.metadata["calibration"]
    ece0 = cal["test_ece_before"]
    before = f"{ece0:.4f}" if ece0 is not None else "n/a (a ranking score)"
    lines.append(f"  calibration {cal['method']}: test ECE {before} -> {cal['test_ece_after']:.4f}")
    lines.append(f"  report: {out.path / export.REPORT_FILE}")
    # User-facing CLI output.
    print("\n".join(lines))
    return out.version
