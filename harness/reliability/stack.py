"""A scenario's private stack (:func:`private_stack`), what a scenario returns (:class:`Outcome`), and a
load running in a thread while the main thread breaks something (:class:`Background`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import stack as st
from harness import stream_driver as h
from harness.embedded import Service, free_port
from harness.members import write_members
from harness.testmodel import build_registry
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Stack:
    """Private Redis + broker + API (+ worker) for one scenario (the processes in ``procs``), with the
    random keys and salt the children got (the log checks look for them)."""

    procs: st.Stack
    storefront_key: str
    admin_key: str
    salt: str
    members: list[str] = field(default_factory=list)
    base: str = ""

    @property
    def settings(self) -> Settings:
        return self.procs.settings

    @property
    def workdir(self) -> Path:
        return self.procs.workdir

    @property
    def redis(self) -> Service:
        return self.procs.redis

    @property
    def broker(self) -> Service:
        return self.procs.broker

    @property
    def api(self) -> st.Proc | None:
        return self.procs.apis[0] if self.procs.apis else None

    @property
    def worker(self) -> st.Proc | None:
        return self.procs.worker

    @property
    def sf(self) -> dict[str, str]:
        return {"X-API-Key": self.storefront_key}

    @property
    def admin(self) -> dict[str, str]:
        return {"X-API-Key": self.admin_key}

    def start_api(self) -> None:
        self.base, _ = self.procs.add_api()

    def start_worker(self) -> st.Proc:
        return self.procs.start_worker()

    def restart_redis(self) -> None:
        self.procs.restart_redis()

    def restart_broker(self) -> None:
        self.procs.restart_broker()

    def api_log(self) -> str:
        if self.api is None or self.api.log_path is None or not self.api.log_path.exists():
            return ""
        return self.api.log_path.read_text(errors="replace")

    def offer_ids(self, n: int = 20) -> list[str]:
        r = httpx.get(f"{self.base}/v1/admin/offers", headers=self.admin, timeout=10)
        r.raise_for_status()
        return [o["offer_id"] for o in r.json()["offers"] if o["active"] and o["inventory"] is None][:n]


@contextlib.contextmanager
def private_stack(
    workdir: Path | None = None,
    *,
    api: bool = True,
    worker: bool = False,
    members: int = 200,
    **overrides: Any,
) -> Iterator[Stack]:
    """Start Redis, broker (topics created), a registry, member states, the API and optionally a worker;
    stop everything on exit. Keys and salt are random per stack (the log checks look for them)."""
    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="benefits-rel-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    try:
        reg = build_registry(wd / "registry")
        sf_key, admin_key, salt = (f"{p}-{secrets.token_hex(12)}" for p in ("sf", "adm", "salt"))
        token = secrets.token_hex(3)
        base: dict[str, Any] = {
            "environment": "test",
            "log_level": "INFO",
            "redis_prefix": f"r{token}",
            "events_topic": f"member-events-{token}",
            "dead_letter_topic": f"member-events-dlq-{token}",
            "consumer_group": f"rel-{token}",
            "registry_dir": reg.root,
            "storefront_api_keys": [sf_key],
            "admin_api_keys": [admin_key],
            "member_hash_salt": salt,
            "model_poll_seconds": 0.5,
            "catalog_poll_seconds": 0.5,
            "worker_metrics_port": free_port(),
            "host": "127.0.0.1",
            "port": free_port(),
        }
        base.update(overrides)
        with st.embedded_stack(Settings(**base), wd) as procs:
            s = Stack(procs, sf_key, admin_key, salt, members=[f"rm-{i}" for i in range(members)])
            if members:
                write_members(s.settings, s.members)
            if api:
                s.start_api()
            if worker:
                s.start_worker()
            yield s
    finally:
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)


def folded(settings: Settings, member_ids: Sequence[str]) -> int:
    """Events folded into the members' stored states so far."""
    assert settings.redis_url is not None
    return int(asyncio.run(h.events_folded(settings.redis_url, settings.redis_prefix, member_ids)))


def wait_folded(settings: Settings, member_ids: Sequence[str], expected: int, timeout_s: float) -> int:
    """:func:`harness.stream_driver.wait_folded` on the stack's Redis and prefix."""
    assert settings.redis_url is not None
    url, prefix = settings.redis_url, settings.redis_prefix
    return int(asyncio.run(h.wait_folded(url, prefix, member_ids, expected, timeout_s)))


def load_avg() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


@dataclass
class Outcome:
    name: str
    tried: str
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)
    lost: str = "nothing"
    notes: list[str] = field(default_factory=list)
    #: A comparison run of an old setting: shown, never counted as a failure of this run.
    baseline: bool = False

    @property
    def ok(self) -> bool:
        return self.passed or self.baseline

    #: Checks about latency on this shared box: reported in docs/reliability.md, but not what tests gate
    #: on (speed is checked by benchmarks, not by timed tests).
    timing: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    @property
    def behaviour_passed(self) -> bool:
        """Every check that is not about latency passed."""
        return bool(self.checks) and all(ok for k, ok in self.checks.items() if k not in self.timing)

    def check(self, name: str, ok: bool, timing: bool = False) -> None:
        self.checks[name] = bool(ok)
        if timing:
            self.timing.add(name)


class Background:
    """Run a coroutine factory in a thread with its own event loop (load while the main thread kills)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = asyncio.run(fn())
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout_s: float = 120.0) -> Any:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError("load thread did not finish")
        if self.error is not None:
            raise self.error
        return self.result
