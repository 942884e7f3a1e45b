"""``benefits loadtest``: storefront load against the recommend API, judged against a latency budget.

One run:

1. **Stack** (only when no target URL is given): an embedded Redis and broker
   (:func:`harness.stack.embedded_stack`, never a shared Redis), a catalog of ``--offers`` demo offers
   written to a JSON seed file, a small model (simulate a few hundred members, train, promote) in a
   temporary registry, member states for the population ``lt-0 .. lt-{members-1}`` folded with the shared
   core (:func:`features.state.apply`) and written straight into Redis with
   :meth:`infra.redis_layout.MemberStore.put_members`, and the API as production runs it: one
   ``benefits serve --workers N`` (N processes sharing one listening socket; the kernel spreads Locust's
   connections over them, and a scrape of the port reports all of them summed). A short warm-up follows.
2. **Load**: ``python -m locust -f benchmarks/locustfile.py --headless`` as a subprocess with the chosen
   shape; it writes an HTML report and CSV stats under ``benchmarks/results/`` (not committed) and every
   request's latency per second to a private timeline file.
3. **Server view**: ``/metrics`` of the API port is scraped before, every half second during, and
   after the run; server-side p50/p99 per stage come from deltas of the
   ``benefits_recommend_stage_seconds`` histograms (summed over processes) over the same windows as the
   client-side figures (whole run, and per phase: flash sale before / spike / after). The server's
   histogram times the recommend handler only: time spent queued in the event loop or in HTTP parsing is
   in the client's figure, not the server's, so a saturated server shows a low server p99 and a high
   client p99.
4. **Budget**: p99 in ms and error rate, judged on the client's figures by default (``--budget-on
   server`` to judge the server's); a run that could not offer 95 % of the intended rate also fails, since
   it proves nothing. Exit code 1 when broken, 2 when the run itself failed.

``--capacity`` steps the offered rate instead (x1.5 until the budget breaks, then bisects) for each
configuration of API processes x catalog size and reports the highest rate within budget.

The summary JSON is the last line of stdout and is written to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from benchmarks import loadtest_experiment
from benchmarks._common import RESULTS_DIR, machine_info, write_result
from benchmarks.flash_claims import DEFAULT_PHASES, OFFER_ID, create_coupon
from benchmarks.flash_claims import check as check_claims
from harness import stack as st
from harness.machine import code_version
from harness.members import simulate_members, write_states
from harness.scrape import Scraper
from harness.timeline import Timeline, client_stats, summarise
from infra.settings import Settings

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
#: A run that offers less than this share of the intended page views did not test the budget.
MIN_ACHIEVED_SHARE = 0.95
#: The capacity search does not go below this rate.
CAPACITY_FLOOR_RPS = 20.0

# -- options ----------------------------------------------------------------------------------------------


@dataclass
class Options:
    """Everything ``benefits loadtest`` can be told (see ``benefits loadtest --help``)."""

    targets: list[str] = field(default_factory=list)
    api_key: str | None = None
    shape: Literal["steady", "ramp", "flash", "soak"] = "steady"
    rps: float = 500.0
    duration_s: float = 60.0
    spike_factor: float = 10.0
    spike_ramp_s: float = 2.0
    user_rps: float = 10.0
    arrivals: Literal["jittered", "poisson", "uniform"] = "jittered"
    offers: int = 200
    members: int = 10_000
    unknown_share: float = 0.1
    feedback_share: float = 0.1
    workers: int = 1
    #: A flash sale with claims: a coupon of this many units raced for on claim_share of page views in the
    #: claim_phases (benchmarks/flash_claims.py); 0: no claims.
    claim_units: int = 0
    claim_share: float = 0.2
    claim_phases: list[str] = field(default_factory=lambda: list(DEFAULT_PHASES))
    #: Run a two-arm experiment (promoted model vs popularity) and report it (benchmarks/loadtest_experiment).
    experiment: bool = False
    p99_ms: float = 10.0
    spike_p99_ms: float = 25.0
    recover_s: float = 5.0
    max_error_rate: float = 0.0
    #: Judged only when set; the share is always reported.
    max_degraded_rate: float | None = None
    budget_on: Literal["client", "server"] = "client"
    #: With budget_on="server": the clients' p99 above this means the server is saturated.
    client_guard_ms: float = 50.0
    name: str | None = None
    registry: Path | None = None
    train_members: int = 300
    train_days: float = 3.0
    warmup_requests: int = 300
    capacity: bool = False
    capacity_offers: list[int] = field(default_factory=lambda: [50, 200, 500])
    capacity_workers: list[int] = field(default_factory=lambda: [1, 2])
    capacity_step_s: float = 15.0
    capacity_start_rps: float = 100.0
    capacity_max_rps: float = 4000.0
    seed: int = 1
    results_dir: Path = RESULTS_DIR
    keep_files: bool = False


# -- budget -----------------------------------------------------------------------------------------------


def _check(name: str, value: float | None, limit: float, ok_if: str = "<=") -> dict[str, Any]:
    ok = value is not None and (value <= limit if ok_if == "<=" else value >= limit)
    return {"check": name, "value": value, "limit": limit, "op": ok_if, "ok": ok}


def judge(summary: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Budget checks of one run's summary: p99 (per phase for a flash sale), error rate, offered load."""
    view = opts.budget_on

    def p99(block: dict[str, Any]) -> float | None:
        if view == "client":
            v = block["client"]["recommend"]["p99_ms"]
        else:
            v = block["server"]["stages"]["total"]["p99_ms"] if block.get("server") else None
        return None if v is None else float(v)

    checks = []
    if summary["shape"] == "flash":
        ph = summary["phases"]
        checks.append(_check("p99_ms before spike", p99(ph["before"]), opts.p99_ms))
        checks.append(_check("p99_ms during spike", p99(ph["spike"]), opts.spike_p99_ms))
        checks.append(
            _check(f"p99_ms from {opts.recover_s:g}s after the spike", p99(ph["after_settled"]), opts.p99_ms)
        )
    else:
        checks.append(_check("p99_ms", p99(summary["overall"]), opts.p99_ms))
    checks.append(_check("error_rate", summary["overall"]["error_rate"], opts.max_error_rate))
    if view == "server":
        # The server's histogram cannot see requests queued in its event loop: a saturated server keeps a
        # low server p99 while its callers wait. The clients' p99 (Locust overhead included) guards that.
        client = summary["overall"]["client"]["recommend"]["p99_ms"]
        checks.append(_check("client p99_ms (saturation guard)", client, opts.client_guard_ms))
    if opts.max_degraded_rate is not None:
        share = summary["overall"].get("server", {}).get("degraded_share")
        checks.append(_check("degraded_share", share, opts.max_degraded_rate))
    checks.append(
        _check(
            "achieved share of offered page views",
            summary["overall"]["achieved_share"],
            MIN_ACHIEVED_SHARE,
            ">=",
        )
    )
    return {
        "on": view,
        "p99_ms": opts.p99_ms,
        "spike_p99_ms": opts.spike_p99_ms if summary["shape"] == "flash" else None,
        "max_error_rate": opts.max_error_rate,
        "max_degraded_rate": opts.max_degraded_rate,
        "client_guard_ms": opts.client_guard_ms if view == "server" else None,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }


# -- the stack --------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What :func:`started_stack` built: the embedded stack (its ``apis`` are the API processes of the
    current configuration), the promoted model and the member population."""

    procs: st.Stack
    model_version: str
    model_trees: int | None
    member_states: list[Any]

    def stop_apis(self) -> None:
        self.procs.stop_apis()


def _train(workdir: Path, opts: Options) -> tuple[Path, str, int | None]:
    from infra.registry import Registry
    from training.pipeline import run as train_run
    from training.simulate import simulate_to_dir

    if opts.registry is not None:
        reg = Registry(opts.registry)
        version = reg.promoted()
        if version is None:
            raise RuntimeError(f"no promoted model in {opts.registry}")
        return opts.registry, version, reg.metadata(version).get("best_iteration")
    sim = workdir / "sim"
    registry_dir = workdir / "registry"
    simulate_to_dir(
        sim, n_members=opts.train_members, days=opts.train_days, n_offers=200, seed=1, progress=False
    )
    out = train_run(registry_dir, sim, promote=False, progress=False)
    # A load test needs a model to serve, not a good one: promote whatever the small run produced.
    Registry(registry_dir).promote(out.version)
    return registry_dir, out.version, out.metadata.get("best_iteration")


def _write_catalog(path: Path, n: int) -> None:
    from features.demo_catalog import demo_catalog

    now = time.time()
    offers = demo_catalog(start_ts=float(int(now // 86400) * 86400 - 86400), n_offers=n)
    path.write_bytes(orjson.dumps([o.model_dump(mode="json") for o in offers]))


@contextlib.contextmanager
def started_stack(base_settings: Settings, opts: Options, workdir: Path) -> Iterator[Stack]:
    """Embedded Redis + broker, a trained and promoted model, the member population in Redis."""
    # Always private infrastructure: a load test must never write into a Redis it did not start.
    with st.embedded_stack(base_settings, workdir) as procs:
        t = time.perf_counter()
        registry_dir, version, trees = _train(workdir, opts)
        log.info("model %s (%s trees) ready in %.1fs", version, trees, time.perf_counter() - t)
        t = time.perf_counter()
        ids = [f"lt-{i}" for i in range(opts.members)]
        states = simulate_members(ids, seed=opts.seed, consent=False)
        log.info("%d member states folded in %.1fs", len(states), time.perf_counter() - t)
        procs.settings = procs.settings.model_copy(update={"registry_dir": registry_dir})
        yield Stack(procs, version, trees, states)


def start_apis(stack: Stack, offers: int, workers: int) -> list[str]:
    """(Re)start the API (``benefits serve --workers N``) serving a catalog of ``offers``; returns its base
    URL (a list: a target given on the command line may name several)."""
    stack.stop_apis()
    seed = stack.procs.workdir / f"catalog-{offers}.json"
    _write_catalog(seed, offers)
    # A prefix per catalog size: the catalog is seeded only into an empty store.
    settings = stack.procs.settings.model_copy(
        update={"redis_prefix": f"lt{offers}", "catalog_seed_path": seed, "log_level": "INFO"}
    )
    asyncio.run(write_states(settings, stack.member_states))
    base, ready = stack.procs.add_api(st.api_settings(settings), name=f"api-{offers}", workers=workers)
    if ready.get("catalog_offers") != offers:
        raise RuntimeError(f"API serves {ready.get('catalog_offers')} offers, expected {offers}")
    return [base]


def warm_up(targets: Sequence[str], api_key: str, n: int) -> dict[str, Any]:
    """A few hundred sequential requests per target (first ONNX runs, connection pools, caches).

    Returns their client-side latency (second half only, one request at a time, httpx, no Locust): the
    round trip of an otherwise idle API on this machine, a reference for what Locust adds under load.
    """
    headers = {"X-API-Key": api_key}
    pages = ["home", "category", "product", "cart"]
    times: list[float] = []
    for t in targets:
        with httpx.Client(base_url=t, headers=headers, timeout=5.0) as c:
            for i in range(n):
                page = pages[i % len(pages)]
                ctx: dict[str, Any] = {"page_type": page}
                if page in ("category", "product"):
                    ctx["category"] = "baby"
                t0 = time.perf_counter()
                r = c.post("/v1/recommend", json={"member_id": f"lt-{i}", "context": ctx})
                r.raise_for_status()
                if i >= n // 2:
                    times.append((time.perf_counter() - t0) * 1e3)
    stats = client_stats(times, 0, 1.0)
    return {"requests": len(times), "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}


# -- one Locust run ---------------------------------------------------------------------------------------


def _locust_csv(prefix: Path) -> dict[str, Any]:
    """Locust's own numbers (its percentiles are whole milliseconds) from ``<prefix>_stats.csv``."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            out[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 1),
                "p50_ms": float(row["50%"]) if row["50%"] not in ("", "N/A") else None,
                "p99_ms": float(row["99%"]) if row["99%"] not in ("", "N/A") else None,
                "max_ms": round(float(row["Max Response Time"]), 2),
            }
    return out


def run_locust(
    targets: Sequence[str],
    opts: Options,
    api_key: str,
    name: str,
    workdir: Path,
    keep_reports: bool = True,
    claims_settings: Settings | None = None,
) -> dict[str, Any]:
    """Run Locust headless with ``opts``' shape; return the summary (client, server, budget). With
    ``claims_settings`` (the stack's, when ``opts.claim_units``) the sale's money state is checked too."""
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    timeline_path = workdir / f"{name}-timeline.json"
    csv_prefix = (opts.results_dir if keep_reports else workdir) / name
    html = (opts.results_dir if keep_reports else workdir) / f"{name}.html"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", targets[0], "--targets", ",".join(targets), "--api-key", api_key,
        "--shape", opts.shape, "--rps", str(opts.rps), "--duration-s", str(opts.duration_s),
        "--spike-factor", str(opts.spike_factor), "--spike-ramp-s", str(opts.spike_ramp_s),
        "--user-rps", str(opts.user_rps), "--arrivals", opts.arrivals, "--members", str(opts.members),
        "--unknown-share", str(opts.unknown_share), "--feedback-share", str(opts.feedback_share),
        "--seed", str(opts.seed), "--timeline-out", str(timeline_path),
        "--csv", str(csv_prefix), "--html", str(html), "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    if claims_settings is not None:
        cmd += ["--claim-offer", OFFER_ID, "--claim-share", str(opts.claim_share),
                "--claim-phases", ",".join(opts.claim_phases)]  # fmt: skip
    scraper = Scraper(targets)
    before = scraper.scrape()
    load_before = os.getloadavg()
    scraper.start()
    locust_log = workdir / f"{name}-locust.log"
    t = time.time()
    try:
        with locust_log.open("wb") as out:
            rc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=opts.duration_s + 120, check=False
            ).returncode
    finally:
        scraper.stop()
    wall = time.time() - t
    after = Scraper(targets).scrape()
    if rc != 0 or not timeline_path.exists():
        tail = "\n".join(locust_log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"locust exited with {rc}:\n{tail}")
    tl = Timeline.load(timeline_path)
    summary = summarise(tl, scraper, before, after, opts.shape, opts.recover_s, opts.p99_ms)
    summary["locust_reported"] = _locust_csv(csv_prefix)
    summary["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    summary["wall_s"] = round(wall, 1)
    if keep_reports:
        summary["reports"] = {"html": _rel(html), "csv_prefix": _rel(csv_prefix)}
    summary["budget"] = judge(summary, opts)
    if claims_settings is not None:
        summary["claims"] = check_claims(claims_settings, opts.claim_units, before, after)
        summary["budget"]["checks"] += summary["claims"]["checks"]
        summary["budget"]["ok"] = all(c["ok"] for c in summary["budget"]["checks"])
    return summary


def _rel(p: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(p.relative_to(Path.cwd()))
    return str(p)


# -- the command ------------------------------------------------------------------------------------------


def _stack_info(stack: Stack | None, opts: Options) -> dict[str, Any]:
    if stack is None:
        return {"started_by_loadtest": False}
    return {
        "started_by_loadtest": True,
        "model_version": stack.model_version,
        "model_trees": stack.model_trees,
        "members_in_redis": opts.members,
        "infrastructure": "embedded Redis + tansu broker on loopback",
        "api_processes": "benefits serve (uvicorn, 1 worker process each), Locust round-robin per user",
        "api_settings": {
            k: getattr(stack.procs.settings, k)
            for k in ("max_in_flight", "deadline_ms", "redis_timeout_ms", "log_level", "default_limit")
        },
        "code": code_version(
            Path(__file__).resolve().parent.parent, ("features", "infra", "stream", "service", "benefits")
        ),
    }


def run_command(base_settings: Settings, opts: Options) -> int:
    """Entry point of ``benefits loadtest``. Returns the exit code (0 ok, 1 budget broken, 2 run failed)."""
    api_key = opts.api_key or base_settings.storefront_api_keys[0].get_secret_value()
    workdir = Path(tempfile.mkdtemp(prefix="benefits-loadtest-"))
    name = opts.name or ("loadtest-capacity" if opts.capacity else f"loadtest-{opts.shape}")
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "api_key"}
    try:
        if opts.targets:
            if opts.capacity:
                raise ValueError("--capacity starts its own stack per configuration; drop --target")
            idle = warm_up(opts.targets, api_key, min(opts.warmup_requests, 50))
            summary = run_locust(opts.targets, opts, api_key, name, workdir)
            summary["sequential_round_trip_before_load"] = idle
            summary["stack"] = _stack_info(None, opts)
        else:
            with started_stack(base_settings, opts, workdir) as stack:
                if opts.capacity:
                    from benchmarks.capacity import capacity_search  # it builds on this module

                    summary = capacity_search(stack, opts, api_key, workdir)
                else:
                    targets = start_apis(stack, opts.offers, opts.workers)
                    claims_settings = None
                    admin_key = base_settings.admin_api_keys[0].get_secret_value()
                    if opts.claim_units > 0:
                        create_coupon(targets[0], admin_key, opts.claim_units)
                        claims_settings = stack.procs.settings.model_copy(
                            update={"redis_prefix": f"lt{opts.offers}"}
                        )
                    if opts.experiment:
                        loadtest_experiment.declare(targets[0], admin_key)
                    idle = warm_up(targets, api_key, opts.warmup_requests)
                    summary = run_locust(
                        targets, opts, api_key, name, workdir, claims_settings=claims_settings
                    )
                    if opts.experiment:
                        wait_s = 2.0 * stack.procs.settings.experiment_poll_seconds + 0.5
                        summary["experiment"] = loadtest_experiment.report(targets[0], admin_key, wait_s)
                    summary["sequential_round_trip_before_load"] = idle
                summary["stack"] = _stack_info(stack, opts)
    except (RuntimeError, ValueError, OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
        log.error("load test failed: %s (work files in %s)", exc, workdir)
        print(json.dumps({"error": str(exc), "workdir": str(workdir)}), flush=True)
        return 2
    summary = {"benchmark": name, "machine": machine_info(), "params": params, **summary}
    if opts.results_dir == RESULTS_DIR:
        write_result(name, summary)
    else:
        (opts.results_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        print(json.dumps(summary, sort_keys=True), flush=True)
    if opts.keep_files:
        log.info("API logs, Locust logs and timelines kept in %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    code = exit_code(summary)
    if code:
        broken = [c["check"] for c in summary["budget"]["checks"] if not c["ok"]]
        log.warning("budget broken: %s", ", ".join(broken))
    return code


def exit_code(summary: dict[str, Any]) -> int:
    """0 when every budget check passed (capacity runs always 0: they look for the break), else 1."""
    if summary.get("mode") == "capacity":
        return 0
    return 0 if summary["budget"]["ok"] else 1
