"""The running experiment of one API process: which arm a member is in, which model an arm serves, and
the per-arm counters (Prometheus at once; the shared store by a periodic flush).

Every replica polls the store (``experiment_poll_seconds``) and rebuilds its :class:`Assigner` when the
revision changes, loading the arms' and the shadow's model versions from the registry off the event
loop. An arm whose model cannot be loaded is left out (its members get the promoted model and no arm,
logged as an error) rather than served by another model under its name.

The request path only does in-process work here: a hash, a table lookup, a dict increment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from infra.experiment_store import ExperimentStore
from service.errors import Conflict, Invalid, ModelRefused
from service.experiments import (
    HOLDOUT_ARM,
    AllocationError,
    Assigner,
    Baseline,
    Experiment,
    StoredExperiment,
    allocate,
)
from service.metrics import Metrics
from service.model import LoadedModel, ModelHolder

log = logging.getLogger(__name__)

#: Feedback type -> the arm counter it increments.
FEEDBACK_COUNTER = {
    "impression": "impressions",
    "click": "clicks",
    "claim": "claims",
    "redeem": "redemptions",
    "dismiss": "dismisses",
}


@dataclass(frozen=True)
class ArmChoice:
    """How to rank for a member in an arm: ``model`` (None = no learned score) and the baseline, if any."""

    name: str
    model: LoadedModel | None
    baseline: Baseline | None


class ExperimentRuntime:
    def __init__(self, store: ExperimentStore, models: ModelHolder, metrics: Metrics, salt: bytes) -> None:
        self.store = store
        self.models = models
        self.metrics = metrics
        self.salt = salt
        self.assigner: Assigner | None = None
        #: model version -> loaded session, for the arms and the shadow of the current experiment.
        self.loaded: dict[str, LoadedModel] = {}
        #: arms left out because their model was refused: name -> reason.
        self.disabled: dict[str, str] = {}
        self._pending: defaultdict[tuple[str, str], defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )

    # -- request path --------------------------------------------------------------------------------
    def assign(self, member_id: str) -> str | None:
        a = self.assigner
        if a is None:
            return None
        arm = a.assign(member_id)
        return None if arm in self.disabled else arm

    def choose(self, member_id: str, promoted: LoadedModel | None) -> ArmChoice | None:
        """The member's arm and how to rank for it; None when no experiment applies to them."""
        a = self.assigner
        if a is None:
            return None
        arm = a.assign(member_id)
        if arm is None or arm in self.disabled:
            return None
        if arm == HOLDOUT_ARM:
            assert a.experiment.holdout is not None
            return ArmChoice(arm, None, a.experiment.holdout.policy)
        spec = a.arms[arm]
        if spec.policy != "model":
            return ArmChoice(arm, None, spec.policy)
        model = self.loaded.get(spec.model_version) if spec.model_version else promoted
        return ArmChoice(arm, model, None)

    @property
    def shadow(self) -> tuple[LoadedModel, float] | None:
        a = self.assigner
        if a is None or a.experiment.shadow is None:
            return None
        model = self.loaded.get(a.experiment.shadow.model_version)
        return (model, a.experiment.shadow.sample_share) if model is not None else None

    def count(self, arm: str, counter: str, amount: float = 1.0) -> None:
        a = self.assigner
        if a is None:
            return
        if arm not in a.arms and arm != HOLDOUT_ARM:
            return  # an arm of an earlier experiment (late feedback): kept in the event, not counted here
        exp_id = a.experiment.experiment_id
        if counter == "cost":
            self.metrics.experiment_cost.labels(experiment=exp_id, arm=arm).inc(amount)
        else:
            self.metrics.experiment_events.labels(experiment=exp_id, arm=arm, event=counter).inc(amount)
        self._pending[(exp_id, arm)][counter] += amount

    # -- background ----------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Add the counts since the last flush to the shared store (one round trip per experiment)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
        by_exp: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        for (exp_id, arm), counters in pending.items():
            by_exp[exp_id][arm] = dict(counters)
        try:
            for exp_id, deltas in by_exp.items():
                await self.store.add_counts(exp_id, deltas)
        except BaseException:
            # Not lost on a failed flush: merged back and retried on the next tick.
            for key, counters in pending.items():
                for name, v in counters.items():
                    self._pending[key][name] += v
            raise

    async def refresh(self) -> bool:
        """Follow the store; True when a new revision (or its removal) was installed."""
        raw = await self.store.get_raw()
        if raw is None:
            changed = self.assigner is not None
            self.assigner, self.loaded, self.disabled = None, {}, {}
            return changed
        try:
            stored = StoredExperiment.model_validate_json(raw)
        except ValidationError as exc:
            log.error("stored experiment is invalid, keeping the current one: %s", exc)
            return False
        if self.assigner is not None and self.assigner.stored.revision == stored.revision:
            return False
        await self._install(stored)
        return True

    async def _install(self, stored: StoredExperiment) -> None:
        exp = stored.experiment
        loaded: dict[str, LoadedModel] = {}
        disabled: dict[str, str] = {}
        for arm in exp.arms:
            if arm.model_version is None:
                continue
            model = await self._load(arm.model_version, loaded)
            if isinstance(model, str):
                disabled[arm.name] = model
                log.error("experiment %s: arm %s left out: %s", exp.experiment_id, arm.name, model)
        if exp.shadow is not None:
            model = await self._load(exp.shadow.model_version, loaded)
            if isinstance(model, str):
                log.error("experiment %s: shadow model not scored: %s", exp.experiment_id, model)
        self.loaded, self.disabled = loaded, disabled
        self.assigner = Assigner(stored, self.salt)
        log.info("experiment %s revision %d installed", exp.experiment_id, stored.revision)

    async def _load(self, version: str, into: dict[str, LoadedModel]) -> LoadedModel | str:
        if version in into:
            return into[version]
        current = self.loaded.get(version)
        if current is not None:
            into[version] = current
            return current
        try:
            model = await asyncio.to_thread(self.models.check, version)
        except ModelRefused as exc:
            return f"model {version} refused ({exc.reason}): {exc.detail}"
        into[version] = model
        return model

    # -- admin ---------------------------------------------------------------------------------------
    async def current(self) -> StoredExperiment | None:
        raw = await self.store.get_raw()
        return StoredExperiment.model_validate_json(raw) if raw is not None else None

    async def put(self, exp: Experiment, reassign: bool = False) -> StoredExperiment:
        """Declare or change the experiment (shares may only grow unless ``reassign``); installs it here.

        Model versions are checked against the running code first: an arm that would be refused on
        load is a 422, not an arm silently left out.
        """
        versions = {a.model_version for a in exp.arms if a.model_version}
        if exp.shadow is not None:
            versions.add(exp.shadow.model_version)
        for version in sorted(versions):
            probe = await self._load(version, dict(self.loaded))
            if isinstance(probe, str):
                raise Invalid(probe)
        previous = await self.current()
        try:
            allocation = allocate(exp, previous, reassign=reassign)
        except AllocationError as exc:
            raise Conflict(str(exc)) from None
        revision = (previous.revision if previous else 0) + 1
        stored = StoredExperiment(
            experiment=exp, allocation=allocation, revision=revision, updated_ts=time.time()
        )
        got = await self.store.put_if_revision(
            orjson.dumps(stored.model_dump(mode="json")), previous.revision if previous else 0
        )
        if got is not None:
            raise Conflict(f"the experiment changed meanwhile (revision {got}); read it and retry")
        await self._install(stored)
        return stored

    async def seed_from_file(self, path: Path) -> None:
        """At start-up: store the file's declaration if none is stored; warn when the stored one differs."""
        try:
            exp = Experiment.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ValueError(f"experiment_path {path}: {exc}") from None
        previous = await self.current()
        if previous is None:
            try:
                await self.put(exp)
            except Conflict:
                pass  # another replica seeded it at the same moment: theirs stands
            return
        if previous.experiment != exp:
            log.warning(
                "experiment_path %s differs from the stored experiment %s (revision %d): the stored one "
                "stands (change it with PUT /v1/admin/experiment)",
                path,
                previous.experiment.experiment_id,
                previous.revision,
            )

    def status(self) -> dict[str, Any]:
        a = self.assigner
        if a is None:
            return {"experiment": None}
        return {
            "experiment": a.experiment.model_dump(mode="json"),
            "revision": a.stored.revision,
            "allocation": {k: [list(r) for r in v] for k, v in a.stored.allocation.items()},
            "allocated_shares": a.shares(),
            "disabled_arms": self.disabled,
        }
