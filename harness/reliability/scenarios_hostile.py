"""Hostile conditions against real processes: slow clients, a recreated topic, a Redis that comes back
empty. The mechanics are shared with the focused tests (``harness.slowclient``,
``harness.embedded.recreate_broker`` / ``restart_redis_empty``, ``harness.stream_driver``)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpx

from harness import stack as st
from harness import stream_driver as h
from harness.embedded import recreate_broker, restart_redis_empty
from harness.reliability.load import (
    Result,
    feedback_maker,
    mixed_maker,
    open_loop,
    phase,
    recommend_maker,
    server_errors,
    summarise,
)
from harness.reliability.stack import Background, Outcome, Stack, folded, load_avg, private_stack, wait_folded
from harness.scrape import read_metrics
from harness.slowclient import is_open, open_slow_body, open_slow_headers, read_status

# -- slow clients ----------------------------------------------------------------------------------------


def slow_clients(
    rate: float = 200.0, n_slow: int = 64, n_headers: int = 32, before_s: float = 2.0, after_s: float = 2.0
) -> Outcome:
    """``n_slow`` connections send a recommend's headers and 5 of 100 declared body bytes, half without an
    API key; ``n_headers`` more never finish their headers. Page views and feedback meanwhile."""
    with private_stack() as s:
        body_s = s.settings.body_read_timeout_ms / 1000.0
        hold_s = body_s + 1.0
        out = Outcome(
            "Slow clients",
            f"recommend + feedback open-loop at {rate:.0f}/s; after {before_s:.0f}s, {n_slow} connections "
            f"send a recommend's headers and 5 of 100 body bytes ({n_slow // 2} without an API key, "
            f"{n_slow - n_slow // 2} with one) and {n_headers} never finish their headers, against "
            f"max_in_flight={s.settings.max_in_flight} and body_read_timeout_ms="
            f"{s.settings.body_read_timeout_ms}; `benefits serve` with no proxy in front",
        )
        port = s.settings.port
        make = mixed_maker(recommend_maker(s.members), feedback_maker(s.members, s.offer_ids()), every=10)
        total = before_s + hold_s + after_s
        start = time.perf_counter()
        bg = Background(lambda: open_loop(s.base, s.storefront_key, make, rate, total))
        time.sleep(before_s)
        t_open = time.perf_counter() - start
        keyless = [open_slow_body(port, None) for _ in range(n_slow // 2)]
        t_keyless = time.perf_counter()
        keyless_status = [read_status(k) for k in keyless]
        keyless_ms = (time.perf_counter() - t_keyless) * 1e3
        keyed = [open_slow_body(port, s.storefront_key) for _ in range(n_slow - n_slow // 2)]
        headers = [open_slow_headers(port) for _ in range(n_headers)]
        t_keyed = time.perf_counter()
        ready: list[dict[str, Any]] = []
        while time.perf_counter() - t_keyed < body_s - 0.5:
            ready.append(httpx.get(f"{s.base}/readyz", timeout=2).json())
            time.sleep(0.5)
        keyed_status = [read_status(k) for k in keyed]
        keyed_after_s = time.perf_counter() - t_keyed
        results: list[Result] = bg.join()
        headers_open = sum(1 for c in headers if is_open(c))
        for c in keyless + keyed + headers:
            c.close()
        rejected = {
            k: v for k, v in read_metrics(s.base).items() if k.startswith("benefits_http_rejected_total")
        }
        alive = s.api is not None and s.api.alive()

    t_hold_end = t_open + (keyed_after_s if keyed_after_s else hold_s)
    during = phase(results, t_open, t_hold_end)
    rec_during = [r for r in during if r.kind == "recommend"]
    fb_during = [r for r in during if r.kind == "feedback"]
    out.numbers = {
        "slow_body_connections": n_slow,
        "slow_header_connections": n_headers,
        "keyless_status": _counts(keyless_status),
        "keyless_answered_in_ms": round(keyless_ms, 1),
        "keyed_status": _counts(keyed_status),
        "keyed_answered_after_s": round(keyed_after_s, 2),
        "slow_headers_still_open_at_end": headers_open,
        "recommend_before": summarise(phase(results, 0.0, t_open, "recommend")),
        "recommend_during_hold": summarise(rec_during),
        "feedback_during_hold": summarise(fb_during, "feedback"),
        "readyz_during_hold": {
            "samples": len(ready),
            "ready": sum(1 for r in ready if r.get("ready")),
            "max_in_flight_seen": max((r.get("in_flight") or 0 for r in ready), default=None),
        },
        "rejected_metric": rejected,
        "load": load_avg(),
    }
    out.check(
        "keyless slow bodies refused with 401 from their headers", keyless_status == [401] * len(keyless)
    )
    out.check(
        "keyed slow bodies answered 408 at the body deadline (slot never taken)",
        keyed_status == [408] * len(keyed) and keyed_after_s >= body_s - 0.2,
    )
    out.check(
        "body timeouts counted (benefits_http_rejected_total{cause=body_timeout})",
        rejected.get('benefits_http_rejected_total{cause="body_timeout"}') == len(keyed),
    )
    out.check("recommend during the hold: none shed as overloaded", bool(rec_during) and
              not any(r.info == "overloaded" for r in rec_during))  # fmt: skip
    out.check(
        "recommend during the hold: personalised (a state-read timeout is the box's CPU noise)",
        all(r.status == 200 and r.info in ("personalised", "state_timeout") for r in rec_during),
    )
    out.check(
        "recommend during the hold: over 99% personalised",
        sum(1 for r in rec_during if r.info == "personalised") > 0.99 * len(rec_during),
        timing=True,
    )
    out.check("feedback during the hold: every request accepted (202)", bool(fb_during) and
              all(r.status == 202 for r in fb_during))  # fmt: skip
    out.check("/readyz ready throughout the hold", bool(ready) and all(r.get("ready") for r in ready))
    out.check(
        "zero 5xx, every request answered", server_errors(results) == 0 and all(r.status for r in results)
    )
    out.check("API alive", alive)
    out.lost = "nothing"
    out.notes.append(
        "Slow *headers* are not timed out by the API itself: uvicorn (0.54) has no header-read timeout "
        "(its keep-alive timer starts only after a response), so such a connection stays open "
        f"({headers_open} of {n_headers} still open at the end) while holding no in-flight slot. The "
        "buffering proxy in front bounds it in every deployment (nginx client_header_timeout 5s: "
        "deploy/nginx/nginx.conf, deploy/k8s/api-proxy-configmap.yaml)."
    )
    return out


def _counts(statuses: Sequence[int]) -> dict[str, int]:
    return _counts_str(str(x) for x in statuses)


def _counts_str(values: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in values:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


# -- topic recreated ---------------------------------------------------------------------------------------


def _feedback(
    s: Stack, members: Sequence[str], offers: Sequence[str], rate: float, secs: float, seed: int
) -> set[str]:
    """Impressions for ``members`` over HTTP; the event ids the API accepted (202)."""
    res: list[Result] = asyncio.run(
        open_loop(
            s.base, s.storefront_key, feedback_maker(members, offers, seed=seed), rate, secs, timeout_s=10.0
        )
    )
    return {r.info for r in res if r.status == 202 and r.info}


def _wait_accepting(s: Stack, member: str, offer: str, timeout_s: float = 30.0) -> float:
    """Seconds until the API accepts feedback again after a broker restart (its publisher reconnects);
    the probe itself is an impression of ``member`` (counted by the caller)."""
    t0 = time.perf_counter()
    body = {
        "type": "impression",
        "member_id": member,
        "offer_id": offer,
        "request_id": "probe",
        "position": 0,
    }
    while time.perf_counter() - t0 < timeout_s:
        if httpx.post(f"{s.base}/v1/feedback", json=body, headers=s.sf, timeout=5).status_code == 202:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise RuntimeError("the API did not accept feedback after the broker restart")


def topic_recreated(fb_rate: float = 100.0, secs: float = 3.0, members: int = 40) -> Outcome:
    """Feedback for the same members before and after the broker lost its topic, twice: with the worker
    up (the new topic holds fewer records) and with the worker down during the outage (more records)."""
    out = Outcome(
        "Topic recreated",
        f"impressions over HTTP at {fb_rate:.0f}/s for {members} members; the broker SIGKILLed and restarted "
        "empty, the topic created again (offsets restart at 0), the same members' feedback again: once with "
        "the worker running, once with it stopped during the outage and more records than before. Before the "
        "fix 21% of such accepted events were skipped as redeliveries",
    )
    mids = [f"tr-{i}" for i in range(members)]
    with private_stack(worker=True, members=0) as s:
        offers = s.offer_ids()
        cfg = s.settings
        topics = {cfg.events_topic: cfg.events_partitions, cfg.dead_letter_topic: 1}
        port = cfg.worker_metrics_port
        assert cfg.redis_url is not None and port is not None
        accepted: list[int] = []
        folded_at: list[int] = []
        accepted.append(len(_feedback(s, mids, offers, fb_rate, secs, seed=1)))
        folded_at.append(wait_folded(cfg, mids, sum(accepted), 45))
        alarms_before = h.offsets_backwards(port)

        # Shape 1: worker up, the new topic shorter than the watermarks.
        s.procs.broker = recreate_broker(s.broker, topics)
        reconnect_s = [_wait_accepting(s, mids[0], offers[0])]
        accepted.append(1 + len(_feedback(s, mids, offers, fb_rate, secs * 0.5, seed=2)))
        folded_at.append(h.settle(cfg.redis_url, cfg.redis_prefix, mids, sum(accepted), 60))
        alarms_1 = h.offsets_backwards(port)

        # Shape 2: worker down during the outage, the new topic longer than the watermarks.
        assert s.worker is not None
        s.worker.stop()
        s.procs.broker = recreate_broker(s.broker, topics)
        reconnect_s.append(_wait_accepting(s, mids[0], offers[0]))
        accepted.append(1 + len(_feedback(s, mids, offers, fb_rate, secs * 1.5, seed=3)))
        s.start_worker()
        folded_at.append(h.settle(cfg.redis_url, cfg.redis_prefix, mids, sum(accepted), 90))
        alarms_2 = h.offsets_backwards(port)
        stats = asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.redis_prefix))
        worker_log = "\n".join(p.read_text(errors="replace") for p in s.procs.log_dir.glob("worker*.log"))
        alive = s.worker is not None and s.worker.alive() and s.api is not None and s.api.alive()

    impressions = sum(c.impressions for c in stats.values())
    out.numbers = {
        "accepted_per_phase": accepted,
        "folded_after_each_phase": folded_at,
        "accepted_total": sum(accepted),
        "folded_total": folded_at[-1],
        "offer_stats_impressions": impressions,
        "api_accepting_again_after_s": [round(x, 2) for x in reconnect_s],
        "alarms_before": alarms_before,
        "alarms_worker_up": alarms_1,
        "alarms_worker_restarted": alarms_2,
        "load": load_avg(),
    }
    out.check(
        "before: every accepted event folded, no alarm", folded_at[0] == accepted[0] and not alarms_before
    )
    out.check(
        "worker up, topic recreated shorter: every accepted event folded exactly once",
        folded_at[1] == sum(accepted[:2]),
    )
    out.check("worker up: offsets-backwards alarm raised", sum(alarms_1.values()) >= 1)
    out.check(
        "worker down, topic recreated longer: every accepted event folded exactly once",
        folded_at[2] == sum(accepted),
    )
    # A new process: its counter starts at 0, so any alarm in it is this restart's.
    out.check("worker down: the restarted worker raised the alarm", sum(alarms_2.values()) >= 1)
    out.check("offer statistics count every accepted impression once", impressions == sum(accepted))
    out.check("alarm logged by the worker", "offsets went backwards on partition" in worker_log)
    out.check("API and worker alive", alive)
    out.lost = "nothing accepted (the memory-only broker forgets the old topic's records; they were folded)"
    return out


# -- Redis back empty ---------------------------------------------------------------------------------------


def _api_state(s: Stack) -> tuple[bool | None, float | None]:
    """(/readyz state_lost, benefits_store_state_lost)."""
    ready = httpx.get(f"{s.base}/readyz", timeout=2).json()
    return ready.get("state_lost"), read_metrics(s.base).get("benefits_store_state_lost")


def emptied_store(
    rate: float = 200.0,
    fb_rate: float = 40.0,
    history: int = 3000,
    members: int = 200,
    before_s: float = 3.0,
    held_s: float = 4.0,
    after_s: float = 4.0,
) -> Outcome:
    """Redis restarted without its data under recommend and feedback load with a worker running; the
    documented recovery (`benefits replay`) run as a command; every event folded once at the end."""
    out = Outcome(
        "Redis back empty",
        f"{history} events folded for {members} members; recommend at {rate:.0f}/s and feedback at "
        f"{fb_rate:.0f}/s over HTTP; Redis restarted without its data after {before_s:.0f}s; "
        f"`benefits replay` run {held_s:.0f}s later; API and worker not restarted. Before the fix every "
        "answer became a quiet cold_start with degraded false",
    )
    events = h.synthetic_events(history, members, seed=17, prefix="hist", now_ts=True)
    mids = sorted({e.member_id for e in events})
    with private_stack(worker=True, members=0) as s:
        cfg = s.settings
        assert cfg.redis_url is not None and cfg.kafka_bootstrap is not None
        wport = cfg.worker_metrics_port
        assert wport is not None
        asyncio.run(h.produce(cfg.kafka_bootstrap, cfg.events_topic, h.keyed(events)))
        folded_history = wait_folded(cfg, mids, len(events), 60)
        offers = s.offer_ids()
        total = before_s + held_s + after_s + 12.0
        start = time.perf_counter()
        rec_bg = Background(lambda: open_loop(s.base, s.storefront_key, recommend_maker(mids), rate, total))
        fb_bg = Background(
            lambda: open_loop(s.base, s.storefront_key, feedback_maker(mids, offers, seed=5), fb_rate, total,
                              timeout_s=10.0)
        )  # fmt: skip
        time.sleep(before_s)
        s.procs.redis = restart_redis_empty(s.redis)
        t_lost = time.perf_counter() - start
        api_lost = Background(lambda: _until_async(lambda: _api_state(s)[0] is True, 10))
        worker_lost_s = _until(lambda: h.worker_state_lost(wport) == 1.0, 10)
        api_lost_s = api_lost.join(15)
        folded_at_hold = folded(cfg, mids)
        api_during = _api_state(s)
        time.sleep(max(0.0, start + before_s + held_s - time.perf_counter()))
        folded_end_hold = folded(cfg, mids)
        t_replay = time.perf_counter() - start
        proc = subprocess.run(
            [sys.executable, "-m", "benefits.cli", "replay"], env=st.child_env(cfg), capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        t_replayed = time.perf_counter() - start
        replay_out = _last_json(proc.stdout)
        api_clear_s = _until(lambda: _api_state(s)[0] is False, 10)
        worker_clear_s = _until(lambda: h.worker_state_lost(wport) == 0.0, 10)
        api_after = _api_state(s)
        rec: list[Result] = rec_bg.join(total + 60)
        fb: list[Result] = fb_bg.join(total + 60)
        accepted = {r.info for r in fb if r.status == 202 and r.info}
        final = h.settle(cfg.redis_url, cfg.redis_prefix, mids, len(events) + len(accepted), 60)
        stats = asyncio.run(h.read_offer_stats(cfg.redis_url, cfg.redis_prefix))
        logs = {p.stem: p.read_text(errors="replace") for p in s.procs.log_dir.glob("*.log")}
        alive = s.worker is not None and s.worker.alive() and s.api is not None and s.api.alive()

    want_impressions = sum(c.impressions for c in h.offline_offer_stats(events).values()) + len(accepted)
    detected = t_lost + max(api_lost_s or 0.0, 0.0) + 0.2
    outage = phase(rec, detected, t_replay)
    after = phase(rec, t_replayed + (api_clear_s or 0.0) + 0.5, total + 1)
    # A cold start not flagged state_lost: what every answer was before the fix. A "personalised" one
    # would come from a partial state the worker folded into the emptied store (held since: none).
    quiet = [r for r in outage if r.info in ("cold_start", "non_personalised")]
    api_log = "\n".join(v for k, v in logs.items() if k.startswith("api"))
    worker_log = "\n".join(v for k, v in logs.items() if k.startswith("worker"))
    out.numbers = {
        "history_events": len(events),
        "folded_before_loss": folded_history,
        "feedback_accepted": len(accepted),
        "feedback": summarise(fb, "feedback"),
        "api_detected_after_s": _r(api_lost_s),
        "worker_detected_after_s": _r(worker_lost_s),
        "readyz_and_metric_during": api_during,
        "folded_when_held": folded_at_hold,
        "folded_at_end_of_hold": folded_end_hold,
        "replay_exit_code": proc.returncode,
        "replay": replay_out,
        "replay_s": round(t_replayed - t_replay, 1),
        "api_cleared_after_replay_s": _r(api_clear_s),
        "worker_resumed_after_replay_s": _r(worker_clear_s),
        "readyz_and_metric_after": api_after,
        "recommend_before": summarise(phase(rec, 0.0, t_lost)),
        "recommend_outage": summarise(outage),
        "recommend_after_replay": summarise(after),
        "quiet_cold_starts_after_detection": len(quiet),
        "outage_answers": dict(sorted(_counts_str(r.info for r in outage).items())),
        "expected_folded": len(events) + len(accepted),
        "folded_at_end": final,
        "offer_stats_impressions": [sum(c.impressions for c in stats.values()), want_impressions],
        "load": load_avg(),
    }
    if proc.returncode != 0:
        out.notes.append("benefits replay: " + (proc.stderr or proc.stdout)[-1500:])
    out.check(
        "API: state_lost in /readyz and the metric", api_lost_s is not None and api_during == (True, 1.0)
    )
    out.check("API: state_lost reported within 5 s of the restart", (api_lost_s or 99) < 5, timing=True)
    out.check("API: error logged", "Redis lost its data" in api_log)
    out.check(
        "recommend during the outage: every answer says state_lost (no quiet cold start, none from a "
        "partial state; a state-read timeout is the box's CPU noise)",
        bool(outage) and all(r.info in ("state_lost", "state_timeout") for r in outage),
    )
    out.check("worker: benefits_stream_state_lost 1 and error logged", worker_lost_s is not None
              and "Folding is held" in worker_log)  # fmt: skip
    out.check("worker: folding held until the replay (nothing folded into the empty store)",
              folded_end_hold == folded_at_hold)  # fmt: skip
    out.check("`benefits replay` succeeded and cleared the lost record",
              proc.returncode == 0 and bool(replay_out.get("lost_record_cleared")))  # fmt: skip
    out.check(
        "API cleared state_lost by itself after the replay", api_clear_s is not None and api_after[1] == 0.0
    )
    out.check("worker resumed by itself after the replay", worker_clear_s is not None)
    out.check(
        "recommend after the replay: personalised again",
        bool(after) and sum(1 for r in after if r.info == "personalised") > 0.9 * len(after),
    )
    out.check(
        "every event (history + accepted feedback) folded exactly once", final == len(events) + len(accepted)
    )
    out.check(
        "offer statistics count every impression once",
        out.numbers["offer_stats_impressions"][0] == want_impressions,
    )
    out.check("zero 5xx, every recommend answered", server_errors(rec) == 0 and all(r.status for r in rec))
    out.check("API and worker alive, neither restarted", alive)
    out.lost = (
        "nothing in the end: member state and offer statistics rebuilt from the topic; recommend answered "
        "state_lost (never a quiet cold start) from detection to the replay"
    )
    return out


def _until(cond: Any, timeout_s: float) -> float | None:
    """Seconds until ``cond()`` is true (None: not within ``timeout_s``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            if cond():
                return time.perf_counter() - t0
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    return None


async def _until_async(cond: Any, timeout_s: float) -> float | None:
    """:func:`_until` in a :class:`Background` thread (two conditions timed from the same instant)."""
    return await asyncio.to_thread(_until, cond, timeout_s)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            return parsed
    return {}
