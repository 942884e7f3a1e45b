"""Start and stop the running parts as real processes: the stream worker and the API.

Used by ``benefits demo``, the end-to-end tests, the load test and the benchmarks, so that all of them
exercise the same commands an operator runs (``benefits worker``, ``benefits serve``). Children get the
settings through ``BENEFITS_*`` environment variables built from one Settings object.
"""

from __future__ import annotations

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

from harness.embedded import Service, free_port, start_broker, start_redis, stop_process
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


def start_api(settings: Settings, log_dir: Path | None = None, name: str = "api") -> Proc:
    return spawn(name, _benefits_cmd("serve"), child_env(settings), log_dir)


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
def infrastructure(settings: Settings) -> Iterator[tuple[Settings, list[Service]]]:
    """Yield settings pointing at real infrastructure, starting embedded Redis/broker where unset."""
    started: list[Service] = []
    update: dict[str, Any] = {}
    try:
        if settings.redis_url is None:
            svc = start_redis()
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
