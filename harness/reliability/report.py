"""``docs/reliability.md``: a summary row and the details of every scenario's :class:`Outcome`."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from typing import Any

from harness.machine import code_version, machine_info
from harness.reliability.stack import Outcome, load_avg


def _key_numbers(o: Outcome) -> str:
    n = o.numbers
    v = n.get

    def g(*path: str) -> Any:
        cur: Any = n
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur

    match o.name:
        case "Redis SIGKILL + restart":
            return (
                f"{v('requests')} requests, 5xx {v('5xx')}, degraded during outage "
                f"{v('degraded_during_outage')} ({g('during_outage', 'info')}), personalised again "
                f"{v('personalised_again_after_restart_s')} s after restart; p99 before/outage/after "
                f"{g('before', 'p99_ms')}/{g('during_outage', 'p99_ms')}/{g('after_recovery', 'p99_ms')} ms"
            )
        case "Broker SIGKILL + restart":
            return (
                f"recommend {g('recommend', 'requests')} requests, 5xx {g('recommend', '5xx')}, shed "
                f"{g('recommend', 'shed_503')}, p99 before/outage "
                f"{v('recommend_p99_before_vs_outage_ms')} ms; "
                f"feedback 503 during outage {v('feedback_503_during_outage')}/"
                f"{g('feedback_during_outage', 'requests')}, 2xx during outage "
                f"{v('feedback_2xx_during_outage')}; accepted before kill "
                f"{v('feedback_accepted_before_kill')} "
                f"(in topic {v('of_which_read_back_from_topic_before_kill')}, "
                f"folded {v('of_which_folded_by_worker_before_kill')}); after restart accepted "
                f"{v('feedback_accepted_after_restart')} (in topic {v('of_which_in_topic_after_restart')}, "
                f"folded {v('of_which_folded_by_worker_after_restart')}), 503 while reconnecting "
                f"{g('feedback_after_restart', 'status', '503') or 0}"
            )
        case "Worker SIGKILL":
            return (
                f"{v('events')} events, {v('kills')} kills, folded {v('folded_at_end')}, "
                f"redelivered+skipped {v('redelivered_and_skipped')}, members differing "
                f"{v('members_differing_from_offline_fold')}; recommend 5xx {g('recommend', '5xx')} of "
                f"{g('recommend', 'requests')}, degraded {g('recommend', 'info')}"
            )
        case "Bad model promoted":
            api = v("admin_api", {})
            return (
                "admin API: "
                + ", ".join(f"{v} {r['status']}" for v, r in api.items())
                + "; pointer: "
                + ", ".join(f"{v} -> {r['reason']}" for v, r in v("registry_pointer", {}).items())
                + f"; recommend 5xx {g('recommend', '5xx')} of {g('recommend', 'requests')}, "
                f"p99 {g('recommend', 'p99_ms')} ms; serving at end {v('serving_at_end')}"
            )
        case name if name.startswith("Overload"):
            return (
                f"capacity ~{v('capacity_rps')} rps; offered {v('offered_rps')} rps: accepted "
                f"{v('accepted_rps')} rps p50/p99 {v('accepted_p50_ms')}/{v('accepted_p99_ms')} ms "
                f"(server total p99 {v('server_total_p99_ms')} ms), shed "
                f"{v('shed')} ({100 * (v('shed_share') or 0):.0f}%: {v('shed_degraded_200')} degraded 200s, "
                f"{v('shed_503')} 503s; p50 {v('shed_p50_ms')} ms), "
                f"no answer {sum((v('no_answer') or {}).values())}, degraded accepted "
                f"{v('degraded_accepted')}; generator late p99 {v('generator_late_p99_ms')} ms"
            )
        case "Slow clients":
            rd = g("recommend_during_hold") or {}
            return (
                f"{v('slow_body_connections')} slow bodies: keyless {v('keyless_status')} in "
                f"{v('keyless_answered_in_ms')} ms, keyed {v('keyed_status')} after "
                f"{v('keyed_answered_after_s')} s; {v('slow_header_connections')} slow headers (still open "
                f"at the end: {v('slow_headers_still_open_at_end')}); during the hold recommend "
                f"{rd.get('requests')} requests {rd.get('info')}, p99 {rd.get('p99_ms')} ms, feedback "
                f"{g('feedback_during_hold', 'status')}; /readyz max in_flight "
                f"{g('readyz_during_hold', 'max_in_flight_seen')}"
            )
        case "Topic recreated":
            return (
                f"accepted per phase {v('accepted_per_phase')} (total {v('accepted_total')}), folded "
                f"{v('folded_after_each_phase')}; offer-stat impressions {v('offer_stats_impressions')}; "
                f"alarms worker up {v('alarms_worker_up')}, after restart {v('alarms_worker_restarted')}; "
                f"API accepting again after {v('api_accepting_again_after_s')} s"
            )
        case "Redis back empty":
            return (
                f"detected by the API after {v('api_detected_after_s')} s, the worker after "
                f"{v('worker_detected_after_s')} s; outage answers {v('outage_answers')} (quiet cold starts "
                f"{v('quiet_cold_starts_after_detection')}); folded while held "
                f"{v('folded_when_held')} -> {v('folded_at_end_of_hold')}; replay {v('replay_s')} s "
                f"({g('replay', 'events_folded')} events), API cleared after "
                f"{v('api_cleared_after_replay_s')} s, "
                f"worker resumed after {v('worker_resumed_after_replay_s')} s; after: "
                f"{g('recommend_after_replay', 'info')}; folded {v('folded_at_end')} of "
                f"{v('expected_folded')}; recommend 5xx {g('recommend_outage', '5xx')}"
            )
        case "Schemathesis (OpenAPI fuzzing)":
            return "; ".join(
                f"{k}: {v.get('test_cases')}, stateful {v.get('stateful', {}).get('scenarios')} scenarios "
                f"over {v.get('stateful', {}).get('links_covered')} links ({v.get('seconds')} s)"
                for k, v in n.items()
            )
        case "Invalid settings and catalog rules":
            s_ok = sum(1 for r in v("settings", []) if r["refused"] and r["named"])
            o_ok = sum(1 for r in v("offers", []) if r["status"] == 422 and r["named"])
            return (
                f"settings refused {s_ok}/{len(v('settings', []))}; offers refused {o_ok}/"
                f"{len(v('offers', []))}; serve exits {g('serve_with_negative_ttl', 'exit_code')} "
                f"(bad TTL), {g('serve_with_invalid_seed', 'exit_code')} (bad seed)"
            )
        case "Security":
            return (
                f"{v('routes')} routes x 4 keys = {v('matrix_cells')} cells, failures "
                f"{len(v('matrix_failures', []))}; secret leaks {len(v('secret_leaks', {}))}, member ids "
                f"in logs {len(v('member_id_in_logs', []))} ({v('log_lines_checked')} DEBUG lines); keys "
                f"after erasure {v('member_keys_after_erasure')}/{v('member_keys_2s_after_erasure')}, "
                f"with events not yet folded {len(v('race_member_keys_after_the_worker_drained') or [])}; "
                f"oversized {v('oversized_declared_status')}/{v('oversized_chunked_status')}"
            )
        case _:
            return ", ".join(f"{k} {v}" for k, v in n.items() if not isinstance(v, dict | list))


def machine() -> str:
    m = machine_info()
    return f"{m['cpu_model']} x {m['cpu_count']} cores, Python {m['python']}, {platform.system()}"


def render(outcomes: Sequence[Outcome], started: float, seconds: float, load_before: str) -> str:
    lines = [
        "# Reliability and security",
        "",
        "Generated by `make reliability` (`benefits reliability`, source `harness/reliability/`); the "
        "same "
        "scenarios run in reduced form in `tests/reliability/`. Every scenario starts its own Redis, broker, "
        "`benefits serve` and `benefits worker` processes on free loopback ports and drives them with a "
        "bounded asyncio HTTP/1.1 load generator in this process.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, code {_commit()}, "
        f"run took {seconds:.0f} s",
        f"- machine: {machine()}; shared with other work: load average (1/5 min) {load_before} at the start, "
        f"{load_avg()} at the end. The load generator shares the 2 cores with the API, so latency figures "
        "are upper bounds and drift by tens of percent between runs.",
        "",
        "## Summary",
        "",
        "| scenario | what was tried | survived | lost | measured |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        failed = "; ".join(k for k, v in o.checks.items() if not v)
        verdict = "yes" if o.passed else f"**no**: {failed}"
        if o.baseline:
            verdict = f"baseline, the old default (not counted): {verdict}"
        lines.append(f"| {o.name} | {o.tried} | {verdict} | {o.lost} | {_key_numbers(o)} |")
    lines += ["", "## Details", ""]
    for o in outcomes:
        lines += [f"### {o.name}", "", o.tried, ""]
        lines += [f"- {'pass' if ok else '**FAIL**'}: {name}" for name, ok in o.checks.items()]
        lines += ["", "<details><summary>numbers</summary>", "", "```json"]
        lines += [json.dumps(o.numbers, indent=1, default=str)]
        lines += ["```", "", "</details>", ""]
        lines += [f"> {note}" if "\n" not in note else f"```\n{note}\n```" for note in o.notes]
        if o.notes:
            lines.append("")
    lines += [
        "## What these checks found and changed",
        "",
        "- Redis restarted empty: the catalog poller installed the empty catalog (version 0), so every "
        "answer after recovery had an empty slate and `/readyz` stayed 503 until someone re-seeded. Fixed "
        "in `service/catalog.py`: an empty store never replaces a live catalog; the replica writes its copy "
        "back (atomic seed-if-empty).",
        "- Broker killed: each feedback request waited the full send timeout (3.5 s); at storefront rates "
        "they filled the in-flight limit and recommend requests were shed (179 of 1,934 during a 4 s "
        "outage, p99 126 ms). Fixed in `service/publisher.py` + `service/app.py`: sends waiting on the "
        "broker are capped at a quarter of `max_in_flight`, and after a failed send the publisher refuses "
        "at once for 1 s. Recommend now sees no shed and no degradation during the outage.",
        "- Overload: with `max_in_flight=256` the accepted requests queued into each other (client p99 in "
        "seconds, over a thousand client timeouts at 3x capacity, most accepted answers degraded by the "
        "deadline). Default lowered to 32 (`benefits/settings.py`, README, k8s configmap); the rows above "
        "compare both on the same run.",
        "- schemathesis: an undecodable body got FastAPI's own 400 `{detail}` (undocumented status and "
        "shape) and `/metrics` was documented as JSON. Fixed in `service/app.py` (framework errors in the "
        "service's error shape, 400 -> 422 invalid_request) and `service/api.py`.",
        "- An offer with `eligibility.valid_to_ts: NaN` was accepted by the admin API and stored; "
        "`features/offers.py` now refuses NaN/inf (commit a055e88, by the owner of the core), and the "
        "invalid-offer table above includes the case.",
        "- Redis back empty (issue 14): every answer had become a quiet `cold_start` with `degraded: "
        "false`. Now the API says `state_lost` and the worker holds folding until `benefits replay` "
        "(`stream/epoch.py`). Building the scenario found two more: `benefits replay` read only the first "
        "record of each partition from the embedded broker (tansu answers ListOffsets with 0 or 1; the "
        "end now comes from the fetch high watermark, `stream/replay.py`), and the worker wrote a batch "
        "or two into the restarted, empty store before its once-a-second check (the Redis client "
        "reconnects and retries by itself): 28 events whose members then answered `personalised` from a "
        "partial state. The worker now reads the marker before each batch write (one round trip).",
        "- Topic recreated (issue 14): before topic incarnations, 21% of accepted feedback of members seen "
        "before was skipped as redeliveries; the scenario now folds every accepted event once, both shapes.",
        "- schemathesis `--checks all` with the stateful phase (issue 14) found: `OPTIONS` and 405 listing "
        "only the first route's methods; `PUT`/`DELETE /v1/admin/offers/export` reaching the "
        "`{offer_id}` route; kind -> subtype, categories, locales, the Idempotency-Key alphabet, "
        "`event_ts` and the preview `limit` bounds missing from the document; `active: 0` coerced to false "
        "in admin offer bodies; `6.0` refused as an integer although JSON Schema admits it; a rollback "
        "with no previous version a 422 instead of a 409; and a real 500: an imported CSV with a bare "
        "carriage return (`csv.Error` uncaught in `service/bulk.py`). All fixed (`service/openapi.py`, "
        "`service/schemas.py`); rules between two fields that JSON Schema cannot compare are described "
        "in the document and kept in positive bodies by `harness/reliability/schemathesis_hooks.py`.",
        "",
        "## Hazards and limits of these checks",
        "",
        "- The embedded Redis runs without persistence and the embedded broker (tansu) keeps topics in "
        "memory: a SIGKILL loses their data. The Redis scenario re-writes member state after the restart "
        "(standing in for a persistent or replicated Redis); the API re-seeds the catalog from its own copy. "
        "Inventory reservations and offer statistics held in that Redis are lost with it. The broker "
        "scenario proves nothing accepted was lost by reading every accepted event back before the kill.",
        "- A recreated topic (offsets restart at 0) is handled by topic incarnations "
        "(`stream/incarnation.py`); the broker scenario still uses fresh members after its restart, the "
        "topic-recreated scenario the same members.",
        "- Redis back empty: the worker reads the epoch marker before each batch write, so only a loss "
        "between that read and the write (under a millisecond) can put a partial state into the empty "
        "store (until the replay overwrites it). Slow *headers* are bounded by the buffering proxy, not by "
        "the API (uvicorn has no header-read timeout).",
        "- Overload is measured against one API process on a 2-core box shared with the load generator; "
        "capacity is closed-loop with as many connections as `max_in_flight` allows.",
        "",
    ]
    return "\n".join(lines)


def _commit() -> str:
    return str(code_version()["commit"] or "?")
