"""Security (route x key matrix, secrets and member ids in logs, body limits, erasure) and the bad-events
suite of the stream tests."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx

from harness.reliability.stack import (
    ROOT,
    Outcome,
    private_stack,
    wait_folded,
)
from infra.settings import Settings

#: Routes anyone may call (probes, metrics scrape, API docs, the console's pages and static files: they
#: hold no data, their scripts call the admin API with the operator's key). Every other route needs a
#: scoped key.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    | {"/console", "/console/login", "/console/static"}
    | {f"/console/{page}" for page in ("catalogue", "campaigns", "models", "health", "member")}
)


def spec_routes(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(method, path, scope) for every operation in the OpenAPI spec; scope from the router's tag."""
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            tags = op.get("tags", [])
            scope = "storefront" if "storefront" in tags else "admin" if "admin" in tags else "public"
            out.append((method.upper(), path, scope))
    return out


def route_matrix(
    base: str, routes: Sequence[tuple[str, str, str]], keys: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """Call every route with no key, a wrong key, and each scope's key; return a row per (route, key) with
    the status and whether it is what the scope demands (401 / 403 / allowed, never 5xx)."""
    rows = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for method, path, scope in routes:
            url = path.replace("{", "").replace("}", "")  # /v1/members/member_id etc.: harmless samples
            for key_name, headers in keys.items():
                r = c.request(method, url, headers=headers, json={} if method in ("POST", "PUT") else None)
                if scope == "public" and path in PUBLIC_PATHS:
                    ok = r.status_code < 500 or (path == "/readyz" and r.status_code == 503)
                elif key_name in ("none", "wrong"):
                    ok = r.status_code == 401
                elif key_name != scope:
                    ok = r.status_code == 403
                else:
                    ok = r.status_code not in (401, 403) and r.status_code < 500
                rows.append(
                    {
                        "method": method,
                        "path": path,
                        "scope": scope,
                        "key": key_name,
                        "status": r.status_code,
                        "ok": ok,
                    }
                )
    return rows


def _chunked_post(host: str, port: int, path: str, headers: dict[str, str], chunks: int, size: int) -> int:
    import socket

    with socket.create_connection((host, port), timeout=10) as sock:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for _ in range(chunks):
                sock.sendall(f"{size:x}\r\n".encode() + b" " * size + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before the whole body is sent
        data = sock.recv(4096)
    return int(data[9:12]) if data.startswith(b"HTTP/1.1") else 0


def _redis_keys_with(settings: Settings, needle: str) -> list[str]:
    import redis

    assert settings.redis_url is not None
    r = redis.Redis.from_url(settings.redis_url)
    try:
        return [k.decode() for k in r.scan_iter(match=f"*{needle}*", count=1000)]
    finally:
        r.close()


def security_checks() -> Outcome:
    out = Outcome(
        "Security",
        "route x key matrix over every operation in the running spec; a full request cycle (recommend, "
        "feedback, wrong keys, admin calls, erasure) then the API and worker logs searched for keys, the "
        "salt and raw member ids; body limits (declared and chunked); erasure then a scan of every Redis key",
    )
    with private_stack(worker=True, members=20, log_level="DEBUG") as s:
        spec = httpx.get(f"{s.base}/openapi.json", timeout=10).json()
        routes = spec_routes(spec)
        wrong = f"wrong-{secrets.token_hex(10)}"
        keys = {"none": {}, "wrong": {"X-API-Key": wrong}, "storefront": s.sf, "admin": s.admin}
        rows = route_matrix(s.base, routes, keys)
        bad = [r for r in rows if not r["ok"]]
        unguarded = [f"{m} {p}" for m, p, sc in routes if sc == "public" and p not in PUBLIC_PATHS]
        out.numbers["routes"] = len(routes)
        out.numbers["matrix_cells"] = len(rows)
        out.numbers["matrix_failures"] = bad
        out.check(
            "every route enforces its scope (401 no/wrong key, 403 other scope)", not bad and not unguarded
        )

        # A full cycle with a distinctive member id; then the logs must contain neither it nor any secret.
        offers = s.offer_ids()
        pii = f"pii-{secrets.token_hex(6)}"
        with httpx.Client(base_url=s.base, timeout=10) as c:
            c.post(
                "/v1/recommend", json={"member_id": pii, "explain": True}, headers=s.admin
            ).raise_for_status()
            for i, o in enumerate(offers[:5]):
                body = {"type": "impression", "member_id": pii, "offer_id": o, "request_id": f"r{i}"}
                assert c.post("/v1/feedback", json=body, headers=s.sf).status_code == 202
            c.post("/v1/recommend", json={"member_id": pii}, headers={"X-API-Key": wrong})
            c.post("/v1/recommend", json={"member_id": pii, "bogus": 1}, headers=s.sf)
            c.get("/v1/admin/offers", headers=s.sf)
            c.get("/v1/admin/models", headers=s.admin)
            folded = wait_folded(s.settings, [pii], 5, 30)
            keys_before = _redis_keys_with(s.settings, pii)
            erase = c.delete(f"/v1/members/{pii}", headers=s.admin)
            keys_after = _redis_keys_with(s.settings, pii)
            time.sleep(2.0)  # the worker reads the tombstone; nothing may come back
            keys_later = _redis_keys_with(s.settings, pii)

            # Erasure while the member's events are still in the topic, not yet folded: the worker is
            # stopped (a lagging or restarting worker), events are accepted, the member is erased, the
            # worker comes back and drains the topic (a canary sent last shows it got to the end).
            race, canary = f"race-{secrets.token_hex(4)}", f"canary-{secrets.token_hex(4)}"
            assert s.worker is not None
            s.worker.stop()
            for i in range(50):
                body = {"type": "impression", "member_id": race, "offer_id": offers[i % len(offers)],
                        "request_id": f"q{i}"}  # fmt: skip
                c.post("/v1/feedback", json=body, headers=s.sf)
            race_erase = c.delete(f"/v1/members/{race}", headers=s.admin).status_code
            body = {"type": "impression", "member_id": canary, "offer_id": offers[0], "request_id": "c"}
            c.post("/v1/feedback", json=body, headers=s.sf)
            s.start_worker()
            canary_folded = wait_folded(s.settings, [canary], 1, 45)
            time.sleep(0.5)
            race_keys = _redis_keys_with(s.settings, race)

            declared = c.post(
                "/v1/recommend",
                content=b'{"member_id": "m1", "pad": "' + b"x" * (s.settings.max_body_bytes + 1) + b'"}',
                headers={**s.sf, "Content-Type": "application/json"},
            ).status_code
        json_sf = {**s.sf, "Content-Type": "application/json"}
        n_chunks = s.settings.max_body_bytes // 4096 + 4
        chunked = _chunked_post("127.0.0.1", s.settings.port, "/v1/recommend", json_sf, n_chunks, 4096)
        time.sleep(0.5)
        api_log = s.api_log()
        worker_logs = "".join(p.read_text(errors="replace") for p in (s.workdir / "logs").glob("worker*.log"))
        alive = s.api is not None and s.api.alive()
    secrets_ = {
        "storefront key": s.storefront_key,
        "admin key": s.admin_key,
        "wrong key": wrong,
        "salt": s.salt,
    }
    leaks = {
        name: where
        for name, value in secrets_.items()
        for where, text in (("api", api_log), ("worker", worker_logs))
        if value in text
    }
    pii_leaks = [
        where for where, text in (("api", api_log), ("worker", worker_logs)) if pii in text or race in text
    ]
    out.numbers.update(
        {
            "log_lines_checked": api_log.count("\n") + worker_logs.count("\n"),
            "secret_leaks": leaks,
            "member_id_in_logs": pii_leaks,
            "member_keys_before_erasure": len(keys_before),
            "erase_status": erase.status_code,
            "member_keys_after_erasure": len(keys_after),
            "member_keys_2s_after_erasure": len(keys_later),
            "race_member_keys_after_the_worker_drained": race_keys,
            "race_erase_status": race_erase,
            "race_worker_drained_past_the_erasure": canary_folded == 1,
            "oversized_declared_status": declared,
            "oversized_chunked_status": chunked,
            "folded_before_erasure": folded,
        }
    )
    out.check("no API key, wrong key or salt in any log line", not leaks)
    out.check("no raw member id in any log line", not pii_leaks)
    out.check(
        "erasure leaves no key of the member (scan of every key)",
        bool(keys_before) and erase.status_code == 200 and not keys_after and not keys_later,
    )
    out.check(
        "erasure with the member's events not yet folded leaves no key",
        race_erase == 200 and canary_folded == 1 and not race_keys,
    )
    out.check("oversized body refused 413 (declared and chunked)", declared == 413 and chunked == 413)
    out.check("API alive afterwards", alive)
    return out


def dead_letters_suite() -> Outcome:
    """Malformed, oversized, unknown and schema-violating events: ``tests/stream/test_dead_letter.py``
    (the stream engineer's suite, real worker and broker) run as is; this records its verdict."""
    out = Outcome(
        "Bad events to the worker",
        "tests/stream/test_dead_letter.py: 35 malformed / binary / oversized / unknown-type / "
        "schema-violating / mis-keyed / untyped events between 6,000 good ones",
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/stream/test_dead_letter.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
    out.numbers = {"pytest": last.strip("= "), "seconds": round(time.perf_counter() - t0, 1)}
    out.check(
        "every bad event dead-lettered with its reason, counts match (topic and metric), worker stays up, "
        "good events folded exactly once",
        proc.returncode == 0,
    )
    if proc.returncode != 0:
        out.notes.append(proc.stdout[-2000:])
    return out
