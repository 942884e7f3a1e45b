"""Storefront traffic against the recommend API: ``python -m locust -f benchmarks/locustfile.py --headless``.

``benefits loadtest`` runs this file as a subprocess (and starts the stack when no target is given); it can
also be run by hand against any deployment::

    python -m locust -f benchmarks/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --shape flash --rps 50 --duration-s 60 --api-key dev-storefront-key

What a simulated storefront does (one task = one page view):

- ``POST /v1/recommend`` for a member drawn with Zipf skew from the population ``lt-0 .. lt-{members-1}``
  (rank 0 is the hottest member), or, for ``--unknown-share`` of views, a member id the service has
  never seen (cold start); page type, category, device and channel vary per view;
- for ``--feedback-share`` of views, ``POST /v1/feedback`` with an ``impression`` of the top offer and,
  for ``--click-share`` of those, a ``click``;
- with ``--claim-offer``, for ``--claim-share`` of views, a claim of that (limited) coupon with an
  ``Idempotency-Key`` (``claim``: 202 accepted or 409 refused are both answers; a 503 is retried once with
  the same key, as a storefront must). ``benefits loadtest --claim-units N`` creates the coupon and checks
  the money state in Redis after the run (``benchmarks/flash_claims.py``).

Rate: ``--rps`` is page views per second (recommend calls), feedback calls come on top. Pacing is
constant throughput: each user waits so that users x per-user rate equals the shape's current rate, with
gaps of mean x U(0.5, 1.5) by default (``--arrivals jittered``), exponential gaps (``poisson``) or
constant gaps from a random phase (``uniform``); a user whose request is slower than its gap does not catch up
(closed loop), so under overload the achieved rate falls below the offered one, and the summary reports
both.

Shapes (one ``LoadTestShape`` subclass each; ``--shape`` picks one, ``SelectedShape`` delegates to it,
because Locust itself runs only the first concrete shape class of a file):

- ``steady``: ``--rps`` for ``--duration-s``;
- ``ramp``: from 10 % of ``--rps`` to ``--rps`` over 70 % of the duration, then held;
- ``flash``: ``--rps`` (the normal rate) for 25 % of the duration, then x``--spike-factor`` reached within
  ``--spike-ramp-s`` seconds and held for 40 %, then back to normal for the last 35 %;
- ``soak``: ``--rps`` for a long ``--duration-s``, reported per minute to reveal drift.

Several targets (``--targets a,b``) are used round-robin per user (users are spread evenly over them):
that is how two API replicas on two ports are driven without a load balancer.

``--timeline-out`` writes, at the end, every request's latency (ms, float: Locust's own percentiles are
rounded to whole milliseconds) per second since the shape started, the phases of the shape and the wall
clock of its start, so the caller can compute client-side percentiles per phase and line them up with the
server's own histograms scraped at the same times.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import orjson
from locust import FastHttpUser, LoadTestShape, events, task

from features.events import PAGE_TYPES
from features.offers import CATEGORIES, CHANNELS
from features.projection import DEVICES

_SHOP = [c for c in CATEGORIES if c != "other"]
_PAGE_WEIGHTS = {"home": 30, "category": 25, "product": 25, "search": 8, "cart": 5, "checkout": 3,
                 "member_center": 3, "order": 1}  # fmt: skip
_DEVICE_WEIGHTS = {"ios": 40, "android": 45, "desktop": 12, "other": 3}
_CHANNEL_WEIGHTS = {"app": 70, "mini_program": 20, "web": 10}


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    g = parser.add_argument_group("storefront load test (benchmarks/locustfile.py)")
    g.add_argument("--targets", default="", help="Comma-separated base URLs, round-robin per user")
    g.add_argument("--api-key", default="dev-storefront-key", help="Storefront API key")
    g.add_argument("--shape", default="steady", choices=sorted(SHAPES), help="Load shape")
    g.add_argument("--rps", type=float, default=100.0, help="Page views per second (flash: normal rate)")
    g.add_argument("--duration-s", type=float, default=60.0, help="Length of the shape in seconds")
    g.add_argument("--spike-factor", type=float, default=10.0, help="flash: peak = rps x this")
    g.add_argument("--spike-ramp-s", type=float, default=2.0, help="flash: seconds to reach the peak")
    g.add_argument("--user-rps", type=float, default=10.0, help="Page views per second per Locust user")
    g.add_argument(
        "--arrivals",
        default="jittered",
        choices=["jittered", "poisson", "uniform"],
        help="Gaps between a user's views: mean x U(0.5, 1.5), exponential, or constant (random phase)",
    )
    g.add_argument("--members", type=int, default=10_000, help="Known members lt-0 .. lt-N-1")
    g.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of member popularity")
    g.add_argument("--unknown-share", type=float, default=0.1, help="Share of views by unknown members")
    g.add_argument("--feedback-share", type=float, default=0.1, help="Share of views that send feedback")
    g.add_argument("--click-share", type=float, default=0.2, help="Share of feedback views with a click")
    g.add_argument("--claim-offer", default="", help="Offer id members claim on --claim-share of views")
    g.add_argument("--claim-share", type=float, default=0.0, help="Share of views that claim --claim-offer")
    g.add_argument(
        "--claim-phases", default="", help="Claim only in these phases (comma-separated; all if empty)"
    )
    g.add_argument("--timeline-out", default="", help="Write per-second latencies and phases (JSON) here")
    g.add_argument("--seed", type=int, default=1)


# -- shapes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """A stretch of a shape: the rate goes linearly from ``rps_from`` to ``rps_to`` over [start_s, end_s)."""

    name: str
    start_s: float
    end_s: float
    rps_from: float
    rps_to: float

    def rate(self, t: float) -> float:
        if self.end_s <= self.start_s:
            return self.rps_to
        f = min(1.0, max(0.0, (t - self.start_s) / (self.end_s - self.start_s)))
        return self.rps_from + f * (self.rps_to - self.rps_from)


class StorefrontShape(LoadTestShape):
    """Base of the shapes: a list of phases; users = ceil(rate / user_rps), paced to the exact rate."""

    abstract: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self._phases: list[Phase] | None = None

    def phases(self, opts: Any) -> list[Phase]:
        raise NotImplementedError

    def _opts(self) -> Any:
        assert self.runner is not None
        return self.runner.environment.parsed_options

    def all_phases(self) -> list[Phase]:
        if self._phases is None:
            self._phases = self.phases(self._opts())
        return self._phases

    def rate_at(self, t: float) -> float | None:
        """Offered page views per second at ``t`` seconds into the shape; None once it is over."""
        for p in self.all_phases():
            if p.start_s <= t < p.end_s:
                return p.rate(t)
        return None

    def tick(self) -> tuple[int, float] | None:
        opts = self._opts()
        t = self.get_run_time()
        if CLOCK.t0_wall is None:
            CLOCK.start(time.time() - t, self.all_phases())
        rate = self.rate_at(t)
        if rate is None:
            return None
        CLOCK.rate = rate
        users = max(1, math.ceil(rate / opts.user_rps))
        # Spawn quickly (a quarter of a second for the whole population): the users' pacing follows the
        # shape's instantaneous rate, so early users are not over-driven, and a flash-sale spike reaches
        # its peak within spike_ramp_s because the rate says so, not because of the spawn rate.
        return users, max(20.0, 4.0 * users)


class SteadyShape(StorefrontShape):
    abstract = True

    def phases(self, opts: Any) -> list[Phase]:
        return [Phase("steady", 0.0, opts.duration_s, opts.rps, opts.rps)]


class RampShape(StorefrontShape):
    abstract = True

    def phases(self, opts: Any) -> list[Phase]:
        d = opts.duration_s
        return [
            Phase("ramp", 0.0, 0.7 * d, 0.1 * opts.rps, opts.rps),
            Phase("peak", 0.7 * d, d, opts.rps, opts.rps),
        ]


class FlashSaleShape(StorefrontShape):
    abstract = True

    def phases(self, opts: Any) -> list[Phase]:
        d, base = opts.duration_s, opts.rps
        peak = base * opts.spike_factor
        a, b = 0.25 * d, 0.65 * d
        ramp = min(opts.spike_ramp_s, 0.5 * (b - a))
        return [
            Phase("before", 0.0, a, base, base),
            Phase("spike_ramp", a, a + ramp, base, peak),
            Phase("spike", a + ramp, b, peak, peak),
            Phase("after", b, d, base, base),
        ]


class SoakShape(StorefrontShape):
    abstract = True

    def phases(self, opts: Any) -> list[Phase]:
        d = opts.duration_s
        n = max(1, math.ceil(d / 60.0))
        return [
            Phase(f"minute_{i + 1:02d}", 60.0 * i, min(d, 60.0 * (i + 1)), opts.rps, opts.rps)
            for i in range(n)
        ]


SHAPES: dict[str, type[StorefrontShape]] = {
    "steady": SteadyShape,
    "ramp": RampShape,
    "flash": FlashSaleShape,
    "soak": SoakShape,
}


class SelectedShape(LoadTestShape):
    """The one concrete shape of this file: runs the ``--shape`` chosen on the command line."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: StorefrontShape | None = None

    def _shape(self) -> StorefrontShape:
        if self._inner is None:
            assert self.runner is not None and self.runner.environment.parsed_options is not None
            self._inner = SHAPES[self.runner.environment.parsed_options.shape]()
            self._inner.runner = self.runner
            self._inner.start_time = self.start_time
        return self._inner

    def reset_time(self) -> None:
        super().reset_time()
        if self._inner is not None:
            self._inner.start_time = self.start_time

    def tick(self) -> tuple[int, float] | None:
        return self._shape().tick()


# -- the clock and the per-request record ----------------------------------------------------------------


class _Clock:
    """Wall clock of the shape's start, its phases, the current offered rate and every latency."""

    def __init__(self) -> None:
        self.t0_wall: float | None = None
        self.phases: list[Phase] = []
        self.rate = 0.0
        # name -> second since start -> [latency ms]; failures counted per second.
        self.latencies: dict[str, dict[int, list[float]]] = {}
        self.failures: dict[str, dict[int, int]] = {}
        self.errors: dict[str, int] = {}

    def start(self, t0_wall: float, phases: list[Phase]) -> None:
        self.t0_wall = t0_wall
        self.phases = phases

    def rate_now(self) -> float:
        """The shape's rate right now (not at the last once-a-second tick: a ramp would lag behind)."""
        if self.t0_wall is None:
            return self.rate
        t = time.time() - self.t0_wall
        for p in self.phases:
            if p.start_s <= t < p.end_s:
                return p.rate(t)
        return self.rate

    def phase_now(self) -> str | None:
        if self.t0_wall is None:
            return None
        t = time.time() - self.t0_wall
        return next((p.name for p in self.phases if p.start_s <= t < p.end_s), None)

    def record(self, name: str, ms: float, exc: BaseException | None) -> None:
        if self.t0_wall is None:
            return
        sec = int(time.time() - self.t0_wall)
        if exc is None:
            self.latencies.setdefault(name, {}).setdefault(sec, []).append(round(ms, 3))
        else:
            per = self.failures.setdefault(name, {})
            per[sec] = per.get(sec, 0) + 1
            key = f"{name}: {type(exc).__name__}: {str(exc)[:120]}"
            self.errors[key] = self.errors.get(key, 0) + 1

    def dump(self) -> dict[str, Any]:
        return {
            "t0_wall": self.t0_wall,
            "phases": [p.__dict__ for p in self.phases],
            "latencies_ms": {n: {str(s): v for s, v in per.items()} for n, per in self.latencies.items()},
            "failures": {n: {str(s): c for s, c in per.items()} for n, per in self.failures.items()},
            "errors": self.errors,
        }


CLOCK = _Clock()


@events.request.add_listener
def _on_request(
    request_type: str, name: str, response_time: float, response_length: int, exception: Any = None, **_: Any
) -> None:
    CLOCK.record(name, response_time, exception)


@events.quitting.add_listener
def _write_timeline(environment: Any, **_: Any) -> None:
    path = environment.parsed_options.timeline_out if environment.parsed_options else ""
    if path:
        with open(path, "wb") as f:
            f.write(orjson.dumps(CLOCK.dump()))


# -- traffic ---------------------------------------------------------------------------------------------


class Population:
    """Member ids with Zipf skew: P(rank k) ~ 1 / (k + 1)^s over ``members`` known ids, plus unknown ids."""

    def __init__(self, members: int, s: float, unknown_share: float, seed: int, draws: int = 200_000) -> None:
        rng = np.random.default_rng(seed)
        w = 1.0 / np.power(np.arange(1, members + 1, dtype=np.float64), s)
        ranks = rng.choice(members, size=draws, p=w / w.sum())
        # Shuffle rank -> id so that the hot members are not simply lt-0, lt-1, ...
        ids = rng.permutation(members)
        self.known = [f"lt-{int(ids[r])}" for r in ranks]
        self.unknown_share = unknown_share
        self._i = itertools.count(int(rng.integers(draws)))

    def next(self, rnd: random.Random) -> str:
        if rnd.random() < self.unknown_share:
            return f"new-{rnd.getrandbits(40):x}"
        return self.known[next(self._i) % len(self.known)]


_POPULATION: Population | None = None
_ROUND_ROBIN = itertools.count()
_USER_SEQ = itertools.count()


def _population(opts: Any) -> Population:
    global _POPULATION
    if _POPULATION is None:
        _POPULATION = Population(opts.members, opts.zipf_s, opts.unknown_share, opts.seed)
    return _POPULATION


@events.test_start.add_listener
def _prepare(environment: Any, **_: Any) -> None:
    # Draw the member sequence before any user runs: done lazily, it would stall the first requests.
    _population(environment.parsed_options)


class Storefront(FastHttpUser):
    """One storefront session stream: page views that ask for offers, some reporting what was seen."""

    # The API answers in milliseconds; a stuck connection is a failure, not a wait.
    network_timeout = 5.0
    connection_timeout = 5.0
    max_retries = 0

    def __init__(self, environment: Any) -> None:
        opts = environment.parsed_options
        targets = [t.strip().rstrip("/") for t in (opts.targets or "").split(",") if t.strip()]
        if targets:
            self.host = targets[next(_ROUND_ROBIN) % len(targets)]
        super().__init__(environment)
        self.opts = opts
        self.rnd = random.Random(opts.seed * 1_000_003 + next(_USER_SEQ))
        self.population = _population(opts)
        self.headers = {"X-API-Key": opts.api_key, "Content-Type": "application/json"}
        # A random phase: users spawned at a fixed spawn interval would otherwise fire in lockstep.
        self._next_start = time.perf_counter() + self.rnd.uniform(0.0, 1.0 / max(opts.user_rps, 0.01))

    def wait_time(self) -> float:
        # Constant throughput at the shape's current rate shared by the running users. Hazard: with
        # constant gaps and users spawned on a regular schedule, all users fire in the same instant (the
        # spawn interval is often a multiple of the gap), which measures burst queueing, not the rate.
        # Jittered gaps (the default) keep users out of step and each user's count close to its mean;
        # exponential gaps give a Poisson stream but a count that varies by sqrt(n) on short runs.
        users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
        per_user = max(CLOCK.rate_now() / users, 0.01)
        if self.opts.arrivals == "poisson":
            gap = self.rnd.expovariate(per_user)
        elif self.opts.arrivals == "jittered":
            gap = self.rnd.uniform(0.5, 1.5) / per_user
        else:
            gap = 1.0 / per_user
        now = time.perf_counter()
        self._next_start = max(now, self._next_start + gap)
        return self._next_start - now

    def _context(self) -> dict[str, Any]:
        r = self.rnd
        page = r.choices(PAGE_TYPES, weights=[_PAGE_WEIGHTS[p] for p in PAGE_TYPES])[0]
        ctx: dict[str, Any] = {
            "page_type": page,
            "device": r.choices(DEVICES, weights=[_DEVICE_WEIGHTS[d] for d in DEVICES])[0],
            "channel": r.choices(CHANNELS, weights=[_CHANNEL_WEIGHTS[c] for c in CHANNELS])[0],
        }
        if page in ("category", "product", "search"):
            ctx["category"] = r.choice(_SHOP)
        return ctx

    def _claim(self, member_id: str) -> None:
        body = orjson.dumps(
            {"type": "claim", "member_id": member_id, "offer_id": self.opts.claim_offer,
             "request_id": f"lt-claim-{self.rnd.getrandbits(48):x}"}
        ).decode()  # fmt: skip
        # One key per attempt (a member may try again later and meet the per-member cap); a 503 (outcome
        # unknown) is retried once with the same key, which must not reserve twice.
        headers = {**self.headers, "Idempotency-Key": f"lt-{self.rnd.getrandbits(64):x}"}
        for _attempt in range(2):
            with self.client.post(
                "/v1/feedback", data=body, headers=headers, name="claim", catch_response=True
            ) as resp:
                if resp.status_code in (202, 409):
                    resp.success()
                    return
                if resp.status_code != 503:
                    resp.failure(f"HTTP {resp.status_code}")
                    return
                resp.failure("HTTP 503")

    @task
    def page_view(self) -> None:
        member_id = self.population.next(self.rnd)
        if self.opts.claim_offer and self.rnd.random() < self.opts.claim_share:
            phases = [p for p in self.opts.claim_phases.split(",") if p]
            if not phases or CLOCK.phase_now() in phases:
                self._claim(member_id)
        body = {"member_id": member_id, "context": self._context()}
        feedback = self.rnd.random() < self.opts.feedback_share
        with self.client.post(
            "/v1/recommend",
            data=orjson.dumps(body).decode(),
            headers=self.headers,
            name="recommend",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            if not feedback:
                return
            answer = orjson.loads(resp.content or b"{}")
        offers = answer.get("offers") or []
        if not offers:
            return
        top = offers[0]
        kinds = ["impression"] + (["click"] if self.rnd.random() < self.opts.click_share else [])
        for kind in kinds:
            fb = {
                "type": kind,
                "member_id": member_id,
                "offer_id": top["offer_id"],
                "request_id": answer["request_id"],
                "position": int(top.get("position", 0)),
                "propensity": float(top.get("propensity") or 1.0),
            }
            with self.client.post(
                "/v1/feedback",
                data=orjson.dumps(fb).decode(),
                headers=self.headers,
                name="feedback",
                catch_response=True,
            ) as r2:
                if r2.status_code != 202:
                    r2.failure(f"HTTP {r2.status_code}")
