"""The demo's membership-programme part: three members whose lifecycle calls for a push, their events sent
through the broker, folded by the worker, and the API's answer with the lifecycle offer and its reason.

1. a member silent for 45 days gets the wake-up coupon (no lifecycle sentence: "Welcome back." is for a
   member who has come back, :mod:`service.reasons`);
2. a member whose PLUS membership ends in 5 days gets the renewal offer ("Your PLUS membership ends in
   5 days.");
3. a silver member 100 short of gold (growth value 2,900 of 3,000) sees the tier nudge ("Spend 100 more
   to reach Gold.").

Nothing here is special-cased in the service: the offers are the demo catalogue's lifecycle offers
(:func:`features.demo_catalog.lifecycle_offers`), eligible by their rules on the folded state, ranked by
the promoted model, explained by :mod:`service.reasons`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from features import events as ev
from features.decay import DAY
from harness import stack
from harness.stream_driver import wait_folded
from infra.settings import Settings
from service.reasons import sentence

#: Slate size asked for (the storefront's home page shows five).
LIMIT = 5


@dataclass(frozen=True)
class Case:
    title: str
    member_id: str
    events: list[ev.Event]
    #: The lifecycle offer the member should get, and the sentence it should carry (None: any).
    offer_id: str
    sentence: str | None


@dataclass(frozen=True)
class Outcome:
    case: Case
    #: 1-based position of the expected offer in the slate (None: not shown).
    position: int | None
    reasons: list[str]
    slate: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        said = self.case.sentence is None or self.case.sentence in self.reasons
        return self.position is not None and said


def cases(now: float, tag: str = "") -> list[Case]:
    """The three members and their histories, as of ``now`` (member ids end with ``tag``), with the
    sentence each one's offer should carry (in English, as :mod:`service.reasons` words it)."""
    seq = iter(range(10_000))

    def e(cls: type[Any], member: str, ts: float, **kw: Any) -> Any:
        return cls(event_id=f"{member}-{next(seq)}", member_id=member, event_ts=ts, **kw)

    def member_since(member: str, days_ago: float) -> list[ev.Event]:
        return [
            e(
                ev.ProfileUpdated,
                member,
                now - days_ago * DAY,
                joined_ts=now - days_ago * DAY,
                region="tier2_city",
            )
        ]

    silent = f"demo-silent{tag}"
    silent_events = [
        *member_since(silent, 400),
        *(
            e(ev.Order, silent, now - d * DAY, amount=85.0, categories=["grocery"], items=3)
            for d in (160, 120, 90, 60, 46)
        ),
        e(ev.PageView, silent, now - 45 * DAY, page_type="home"),
        e(ev.TierChanged, silent, now - 300 * DAY, tier="regular"),
    ]
    renewing = f"demo-renewal{tag}"
    renewal_events = [
        *member_since(renewing, 300),
        e(ev.TierChanged, renewing, now - 200 * DAY, tier="silver"),
        # Monthly PLUS: renewed 25 days ago, runs out in 5 days (a minute short, so "5 days" it says).
        e(ev.PaidMembershipStarted, renewing, now - 180 * DAY, plan="PLUS", expires_at=now - 150 * DAY),
        e(ev.PaidMembershipRenewed, renewing, now - 25 * DAY, plan="PLUS", expires_at=now + 5 * DAY - 60.0),
        *(e(ev.PageView, renewing, now - h * 3600.0, page_type="home") for h in (50, 30, 3)),
        e(ev.Order, renewing, now - 2 * DAY, amount=120.0, categories=["home"], items=2),
    ]
    climber = f"demo-tier{tag}"
    tier_events = [
        *member_since(climber, 500),
        e(ev.TierChanged, climber, now - 100 * DAY, tier="silver"),
        # Growth value over the last year: 2,900 (silver from 1,000, gold at 3,000).
        *(
            e(ev.Order, climber, now - d * DAY, amount=amount, categories=["fashion"], items=2)
            for d, amount in ((300, 700.0), (200, 800.0), (120, 600.0), (40, 500.0), (6, 300.0))
        ),
        *(
            e(ev.PageView, climber, now - h * 3600.0, page_type="category", category="fashion")
            for h in (30, 5, 1)
        ),
    ]
    return [
        Case(
            "a member silent for 45 days",
            silent,
            silent_events,
            "wake-up-coupon",
            sentence("missed_you", {"days": 45}),
        ),
        Case(
            "a PLUS member whose membership ends in 5 days",
            renewing,
            renewal_events,
            "renewal-offer",
            sentence("paid_expiring", {"plan": "PLUS", "days": 5}),
        ),
        Case(
            "a silver member 100 short of gold",
            climber,
            tier_events,
            "tier-progress-nudge",
            sentence("tier_progress", {"amount": 100, "tier": "gold"}),
        ),
    ]


def recommend(client: httpx.Client, member_id: str, limit: int = LIMIT) -> dict[str, Any]:
    """The member's home-page slate (English reasons)."""
    r = client.post(
        "/v1/recommend",
        json={
            "member_id": member_id,
            "context": {"page_type": "home", "channel": "app", "device": "ios"},
            "limit": limit,
            "locale": "en",
        },
    )
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def outcome(case: Case, body: dict[str, Any]) -> Outcome:
    slate = list(body.get("offers", []))
    for i, offer in enumerate(slate):
        if offer["offer_id"] == case.offer_id:
            return Outcome(case, i + 1, [r.get("text", "") for r in offer.get("reasons", [])], slate)
    return Outcome(case, None, [], slate)


def publish_and_wait(
    settings: Settings, all_cases: list[Case], worker: stack.Proc, timeout_s: float = 60.0
) -> None:
    """Send the cases' events through the broker and wait until the worker has folded all of them."""
    from benefits.demo import _publish

    assert settings.redis_url is not None
    events = sorted((e for c in all_cases for e in c.events), key=lambda e: e.event_ts)
    asyncio.run(_publish(settings, events))
    members = [c.member_id for c in all_cases]
    seen = asyncio.run(
        wait_folded(settings.redis_url, settings.redis_prefix, members, len(events), timeout_s)
    )
    if seen < len(events):
        why = "" if worker.alive() else f"; the worker exited:\n{worker.tail()}"
        raise RuntimeError(f"only {seen}/{len(events)} lifecycle events folded after {timeout_s:.0f}s{why}")


def run_lifecycle(settings: Settings, base: str, worker: stack.Proc, console: Console) -> int:
    """Publish the three members' events, ask the API for their offers, print them. Returns 0 when each
    member got the expected lifecycle offer with its sentence, else 1."""
    t = time.perf_counter()
    all_cases = cases(time.time())
    publish_and_wait(settings, all_cases, worker)
    console.print(
        f"{sum(len(c.events) for c in all_cases)} events of {len(all_cases)} members published and folded "
        f"in {time.perf_counter() - t:.1f}s"
    )
    headers = {"X-API-Key": settings.storefront_api_keys[0].get_secret_value()}
    results = []
    with httpx.Client(base_url=base, headers=headers, timeout=5.0) as client:
        for case in all_cases:
            result = outcome(case, recommend(client, case.member_id))
            results.append(result)
            print_outcome(result, console)
    failed = [r for r in results if not r.ok]
    for r in failed:
        said = f" with {r.case.sentence!r}" if r.case.sentence else ""
        console.print(f"[red]{r.case.member_id}: expected {r.case.offer_id} in the top {LIMIT}{said}[/red]")
    return 1 if failed else 0


def print_outcome(result: Outcome, console: Console) -> None:
    case = result.case
    table = Table(title=f"{case.title} ({case.member_id})", title_justify="left")
    table.add_column("#")
    table.add_column("offer")
    table.add_column("score", justify="right")
    table.add_column("why")
    for i, o in enumerate(result.slate, start=1):
        mark = "[bold green]" if o["offer_id"] == case.offer_id else ""
        reasons = " / ".join(r.get("text", r.get("code", "")) for r in o.get("reasons", []))
        table.add_row(
            str(i), f"{mark}{o.get('title', o['offer_id'])}", f"{o.get('score', 0):.3f}", f"{mark}{reasons}"
        )
    console.print(table)
    if result.ok:
        said = f': "{case.sentence}"' if case.sentence else ""
        console.print(f"[green]-> {case.offer_id} at #{result.position}{said}[/green]")
    elif result.position is not None:
        console.print(f"[yellow]-> {case.offer_id} at #{result.position}, reasons {result.reasons}[/yellow]")
    else:
        console.print(f"[red]-> {case.offer_id} not in the top {LIMIT}[/red]")
