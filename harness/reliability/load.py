"""A bounded asyncio HTTP/1.1 load generator (:class:`Load`: keep-alive connections, closed- and open-loop
runs, a client timeout on every request), request makers, and summaries of what the clients saw."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

PAGES = ("home", "category", "product", "cart", "checkout")


@dataclass(frozen=True)
class Result:
    t: float  # seconds since the load started (scheduled time in open loop)
    status: int  # 0: connection error or client timeout
    ms: float  # from the scheduled send (open loop) / the send (closed loop) to the full response
    kind: str  # "recommend" | "feedback"
    info: str | None = None  # recommend: mode or degraded cause; feedback: event_id of a 202
    member: str | None = None


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def http_request(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Load:
    """Keep-alive connections (at most ``max_conns``) to one API; closed- or open-loop runs.

    Far cheaper per request than httpx, so one Python core can offer several thousand requests per
    second to the API on the other core. Every request has a client timeout; nothing is unbounded.
    """

    def __init__(self, base: str, api_key: str, max_conns: int = 512, timeout_s: float = 5.0) -> None:
        hostport = base.split("//", 1)[1]
        self.host, port = hostport.split(":")
        self.port = int(port)
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self.max_conns = max_conns
        self.timeout_s = timeout_s
        self._idle: list[_Conn] = []
        self._opened = 0
        self._free = asyncio.Condition()

    async def _get(self) -> tuple[_Conn, bool]:
        """(connection, reused): an idle one (most recently used first) or a new one."""
        async with self._free:
            while not self._idle and self._opened >= self.max_conns:
                await self._free.wait()
            if self._idle:
                return self._idle.pop(), True
            self._opened += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            async with self._free:
                self._opened -= 1
                self._free.notify()
            raise
        return _Conn(reader, writer), False

    async def _put(self, conn: _Conn | None) -> None:
        async with self._free:
            if conn is None:
                self._opened -= 1
            else:
                self._idle.append(conn)
            self._free.notify()

    async def send(self, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        raw = http_request(self.host, self.port, "POST", path, self.headers, orjson.dumps(payload))
        for _attempt in range(2):
            try:
                conn, reused = await asyncio.wait_for(self._get(), self.timeout_s)
            except (OSError, TimeoutError) as exc:
                return 0, f"connect:{type(exc).__name__}".encode()
            try:
                async with asyncio.timeout(self.timeout_s):
                    out = await conn.request(raw)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                await self._put(None)
                # uvicorn closes keep-alive connections idle for 5 s; a pooled one may be gone already.
                # Retry that case once on a new connection (the server never saw the request).
                if reused and isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
                    # Its idle peers are likely as old: drop them all so the retry opens a new one.
                    async with self._free:
                        stale, self._idle = self._idle, []
                        self._opened -= len(stale)
                    for c in stale:
                        c.close()
                    continue
                return 0, type(exc).__name__.encode()
            await self._put(conn)
            return out
        return 0, b"closed"

    async def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()

    async def one(self, t0: float, scheduled: float, req: Request) -> Result:
        status, body = await self.send(req.path, req.payload)
        done = time.perf_counter()
        info: str | None = None
        if status == 0:
            info = body.decode()
        elif status in (200, 202) and body:
            parsed = orjson.loads(body)
            if req.kind == "recommend":
                info = parsed.get("degraded_cause") or parsed.get("mode")
                if not parsed.get("offers"):
                    info = f"{info}+empty"
            else:
                info = parsed.get("event_id")
        elif body and status >= 400:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                info = orjson.loads(body).get("error")
        return Result(scheduled - t0, status, (done - scheduled) * 1e3, req.kind, info, req.member)

    async def closed_loop(
        self, make: Callable[[int], Request], concurrency: int, seconds: float
    ) -> list[Result]:
        t0 = time.perf_counter()
        end = t0 + seconds
        out: list[Result] = []
        counter = iter(range(10**9))

        async def user() -> None:
            while time.perf_counter() < end:
                out.append(await self.one(t0, time.perf_counter(), make(next(counter))))

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return out

    async def open_loop(
        self,
        make: Callable[[int], Request],
        rate: float,
        seconds: float,
        on_tick: Callable[[float], None] | None = None,
    ) -> list[Result]:
        """Send at ``rate`` per second on schedule regardless of answers (latency counts from the
        scheduled instant, so a client that falls behind shows up as latency, not as a lower rate)."""
        t0 = time.perf_counter()
        out: list[Result] = []
        tasks: set[asyncio.Task[None]] = set()
        n = int(rate * seconds)

        async def fire(i: int, at: float) -> None:
            out.append(await self.one(t0, at, make(i)))

        for i in range(n):
            at = t0 + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if on_tick is not None:
                on_tick(at - t0)
            task = asyncio.create_task(fire(i, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        return out


async def open_loop(
    base: str,
    api_key: str,
    make: Callable[[int], Request],
    rate: float,
    seconds: float,
    **load_options: Any,
) -> list[Result]:
    """One open-loop run of ``make`` at ``rate`` per second against ``base`` on a :class:`Load` of its own
    (closed afterwards); ``load_options`` go to :class:`Load`."""
    load = Load(base, api_key, **load_options)
    try:
        return await load.open_loop(make, rate, seconds)
    finally:
        await load.close()


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    payload: dict[str, Any]
    member: str | None = None


def recommend_maker(members: Sequence[str], seed: int = 1) -> Callable[[int], Request]:
    rng = random.Random(seed)

    def make(i: int) -> Request:
        page = PAGES[i % len(PAGES)]
        ctx: dict[str, Any] = {"page_type": page}
        if page in ("category", "product"):
            ctx["category"] = rng.choice(("baby", "beauty", "electronics", "grocery"))
        mid = members[rng.randrange(len(members))]
        return Request("recommend", "/v1/recommend", {"member_id": mid, "context": ctx}, mid)

    return make


def feedback_maker(members: Sequence[str], offers: Sequence[str], seed: int = 2) -> Callable[[int], Request]:
    rng = random.Random(seed)

    def make(i: int) -> Request:
        mid = members[i % len(members)]
        body = {
            "type": "impression",
            "member_id": mid,
            "offer_id": rng.choice(offers),
            "request_id": f"req-{i}",
            "position": i % 5,
        }
        return Request("feedback", "/v1/feedback", body, mid)

    return make


def mixed_maker(
    rec: Callable[[int], Request], fb: Callable[[int], Request], every: int
) -> Callable[[int], Request]:
    """Every ``every``-th request is feedback, the rest recommend."""
    return lambda i: fb(i // every) if i % every == every - 1 else rec(i)


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 2)


def summarise(results: Sequence[Result], kind: str | None = None) -> dict[str, Any]:
    rs = [r for r in results if kind is None or r.kind == kind]
    ok = [r for r in rs if 200 <= r.status < 300]
    return {
        "requests": len(rs),
        "ok": len(ok),
        "5xx": sum(1 for r in rs if r.status >= 500 and r.info != "overloaded"),
        "shed_503": sum(1 for r in rs if r.status == 503 and r.info == "overloaded"),
        "status": dict(sorted(Counter(str(r.status) for r in rs).items())),
        "no_answer": dict(Counter(r.info for r in rs if r.status == 0)),
        "p99_all_answers_ms": pct([r.ms for r in rs if r.status], 0.99),
        "info": dict(Counter(r.info for r in ok if r.info is not None and kind != "feedback").most_common()),
        "p50_ms": pct([r.ms for r in ok], 0.50),
        "p99_ms": pct([r.ms for r in ok], 0.99),
        "max_ms": round(max((r.ms for r in ok), default=0.0), 2),
    }


def server_errors(results: Sequence[Result], kind: str | None = None) -> int:
    """Responses >= 500 other than a deliberate 503 (overloaded / unavailable broker for feedback)."""
    return sum(
        1
        for r in results
        if (kind is None or r.kind == kind)
        and r.status >= 500
        and r.info not in ("overloaded", "unavailable")
    )


def phase(results: Sequence[Result], a: float, b: float, kind: str | None = None) -> list[Result]:
    return [r for r in results if a <= r.t < b and (kind is None or r.kind == kind)]
