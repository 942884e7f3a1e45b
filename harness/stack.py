"""Start and stop the running parts as real processes: the stream worker and the API.

Used by ``benefits demo``, the end-to-end tests, the load test, the reliability scenarios and the
benchmarks, so that all of them exercise the same commands an operator runs (``benefits worker``,
``benefits serve``). Children get the settings through ``BENEFITS_*`` environment variables built from one
Settings object. :func:`embedded_stack` is the one private stack (embedded Redis and broker, topics, the
API and worker processes on them) of the load test and the reliability scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import SecretStr

from harness.embedded import (
    Service,
    create_topics,
    free_port,
    start_broker,
    start_redis,
    stop_process,
    topic_configs,
)
from infra.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = f"BENEFITS_{name.upper()}"
        if isinstance(value, list):
            env[key] = json.dumps([v.get_secret_value() if isinstance(v, SecretStr) else v for v in value])
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        elif isinstance(value, dict):
            env[key] = json.dumps(value)  # a nested model (lifecycle): pydantic-settings parses JSON
        else:
            env[key] = str(value)
    return env


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BENEFITS_")}
    return {**base, **settings_env(settings), "PYTHONUNBUFFERED": "1", **extra}


def _benefits_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "benefits.cli", *args]


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        stop_process(self.proc, sig, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path | None) -> Proc:
    log = None
    log_path = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by Proc.stop
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    return Proc(name, proc, log_path, log)


def start_worker(settings: Settings, log_dir: Path | None = None, name: str = "worker") -> Proc:
    return spawn(name, _benefits_cmd("worker"), child_env(settings), log_dir)


def start_api(settings: Settings, log_dir: Path | None = None, name: str = "api", workers: int = 1) -> Proc:
    """``benefits serve`` (``--workers N``: N processes sharing the port)."""
    return spawn(name, _benefits_cmd("serve", "--workers", str(workers)), child_env(settings), log_dir)


def wait_ready(base_url: str, proc: Proc, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until ``/readyz`` answers 200; raise with the process log tail if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=1.0)
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
            last = r.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s:.0f}s ({last}):\n{proc.tail()}")


@contextlib.contextmanager
def infrastructure(
    settings: Settings, redis_data_dir: Path | None = None
) -> Iterator[tuple[Settings, list[Service]]]:
    """Yield settings pointing at real infrastructure, starting embedded Redis/broker where unset.

    ``redis_data_dir``: the embedded Redis persists there (AOF), see :func:`harness.embedded.start_redis`.
    """
    started: list[Service] = []
    update: dict[str, Any] = {}
    try:
        if settings.redis_url is None:
            svc = start_redis(data_dir=redis_data_dir)
            started.append(svc)
            update["redis_url"] = svc.url
        if settings.kafka_bootstrap is None:
            svc = start_broker()
            started.append(svc)
            update["kafka_bootstrap"] = svc.url
        yield settings.model_copy(update=update), started
    finally:
        for svc in reversed(started):
            svc.stop()


def api_settings(settings: Settings, port: int | None = None) -> Settings:
    return settings.model_copy(update={"port": port or free_port(), "host": "127.0.0.1"})


def create_stream_topics(settings: Settings) -> None:
    """The events topic (``events_partitions`` partitions, ``events_retention_seconds`` retention) and the
    dead-letter topic on its broker."""
    assert settings.kafka_bootstrap is not None
    topics = {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1}
    configs = topic_configs(settings.events_topic, settings.events_retention_seconds)
    asyncio.run(create_topics(settings.kafka_bootstrap, topics, configs=configs))


@dataclass
class Stack:
    """An embedded Redis and broker of one run, and the API and worker processes started on them.

    ``settings`` point at this Redis and broker; logs go to ``workdir/logs``.
    """

    workdir: Path
    settings: Settings
    redis: Service
    broker: Service
    apis: list[Proc] = field(default_factory=list)
    worker: Proc | None = None

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def add_api(
        self, settings: Settings | None = None, name: str = "api", workers: int = 1
    ) -> tuple[str, dict[str, Any]]:
        """Start ``benefits serve --workers N`` with ``settings`` (default: the stack's) and wait until it
        is ready; (base URL, its ``/readyz`` body: of whichever process answered)."""
        s = settings or self.settings
        proc = start_api(s, self.log_dir, name=name, workers=workers)
        self.apis.append(proc)
        base = f"http://127.0.0.1:{s.port}"
        return base, wait_ready(base, proc)

    def stop_apis(self) -> None:
        for p in self.apis:
            p.stop()
        self.apis.clear()

    def start_worker(self) -> Proc:
        """A new ``benefits worker`` (the previous one, if any, is the caller's to have stopped)."""
        n = len(list(self.log_dir.glob("worker*.log")))
        self.worker = start_worker(self.settings, self.log_dir, name=f"worker-{n}")
        return self.worker

    def restart_redis(self) -> None:
        """A new embedded Redis on the same port (empty: the embedded one keeps nothing on disk)."""
        self.redis = start_redis(port=self.redis.port)

    def restart_broker(self) -> None:
        """A new embedded broker on the same port, topics created again (memory storage: they are empty)."""
        self.broker = start_broker(port=self.broker.port)
        create_stream_topics(self.settings)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.stop_apis()
        self.broker.stop()
        self.redis.stop()


@contextlib.contextmanager
def embedded_stack(settings: Settings, workdir: Path) -> Iterator[Stack]:
    """Start an embedded Redis and broker, point ``settings`` at them (never a shared Redis), create the
    topics; stop every process of the stack on exit."""
    redis = start_redis()
    broker: Service | None = None
    stack: Stack | None = None
    try:
        broker = start_broker()
        update = {"redis_url": redis.url, "kafka_bootstrap": broker.url, "redis_cluster": False}
        stack = Stack(workdir, settings.model_copy(update=update), redis, broker)
        create_stream_topics(stack.settings)
        yield stack
    finally:
        if stack is not None:
            stack.stop()  # the Redis and broker it holds may be restarted ones
        else:
            if broker is not None:
                broker.stop()
            redis.stop()
