"""Run the API: ``serve(settings, workers=N)``; one uvicorn process, or N sharing one listening socket.

With ``workers > 1`` this process binds the socket once and starts N worker processes (``spawn``: fresh
interpreters, no state forked from a parent that has threads), each handed the same socket; the kernel
spreads incoming connections over the processes that are accepting. Each worker runs its own app: its
own Redis pool, catalogue and model holders and registry pollers, so all of them hot-swap a promoted
model within a poll interval of each other. The parent only supervises: a worker that dies is restarted
(after a pause, so a crash loop does not spin), and SIGTERM/SIGINT stop every worker gracefully.

Process-wide tuning belongs here, not in :func:`service.app.create_app`: an app built inside a test or a
benchmark must not freeze its host process's garbage collector. Each worker tunes its own GC once its
lifespan has loaded the catalogue and model (:func:`service.app._tune_gc`).

Metrics: with N workers a scrape of the port reaches one of them, so the workers run prometheus_client's
multi-process mode: each writes its values to files in ``metrics_multiprocess_dir`` (a fresh temporary
directory unless set; emptied at start, since files left by an earlier run would be added in) and any of
them answers ``/metrics`` with the sum over all (:meth:`service.metrics.Metrics.render`). A worker that
dies is marked dead there so its live gauges drop out; its counters stay counted, as they should.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from infra.logs import configure_logging
from infra.settings import Settings

log = logging.getLogger(__name__)

#: A worker that exits is restarted after this pause (a crash loop then costs little CPU).
RESTART_PAUSE_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 15.0


def _run(settings: Settings, sock: socket.socket | None) -> None:
    """One uvicorn server (uvloop + httptools) on ``sock``, or on settings.host/port when None."""
    import uvicorn

    from service.app import _tune_gc, create_app

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # After the lifespan has loaded the catalogue and model: freeze what start-up allocated.
            _tune_gc()

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,  # one structured line per recommend request instead (service.requests)
        log_config=None,  # logging is configured by the entry point (benefits.cli) or _worker_main
        workers=1,
    )
    _Server(config).run(sockets=[sock] if sock is not None else None)


def _use_multiprocess_metrics(directory: Path) -> None:
    """Switch prometheus_client to multi-process mode in this (spawned, fresh) interpreter. The library
    reads the variable when it chooses its value class, at import; it is chosen again here in case
    something imported it already, so every metric the app then creates writes to ``directory``."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def _prepare_metrics_dir(settings: Settings) -> tuple[Settings, Path | None]:
    """The multi-process metrics directory, emptied; returns the workers' settings and the directory to
    remove at exit (None when the operator chose it)."""
    created = None
    directory = settings.metrics_multiprocess_dir
    if directory is None:
        directory = created = Path(tempfile.mkdtemp(prefix="benefits-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return settings.model_copy(update={"metrics_multiprocess_dir": directory}), created


def _worker_main(settings: Settings, sock: socket.socket, index: int) -> None:
    # A spawned interpreter starts with no logging set up: the same JSON lines as the parent's.
    configure_logging(settings.log_level)
    if settings.metrics_multiprocess_dir is not None:
        _use_multiprocess_metrics(settings.metrics_multiprocess_dir)
    logging.getLogger(__name__).info("API worker %d started", index)
    _run(settings, sock)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, workers: int = 1) -> None:
    """Serve until SIGTERM/SIGINT. Blocking."""
    if settings.redis_url is None:
        raise ValueError("redis_url is required (the CLI starts an embedded Redis in dev when it is unset)")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if workers == 1:
        _run(settings.model_copy(update={"metrics_multiprocess_dir": None}), None)
        return
    sock = bind(settings.host, settings.port)
    settings, created_dir = _prepare_metrics_dir(settings)
    metrics_dir = settings.metrics_multiprocess_dir
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, Any] = {}
    stopping = False

    def start(i: int) -> None:
        p = ctx.Process(target=_worker_main, args=(settings, sock, i), name=f"api-worker-{i}", daemon=False)
        p.start()
        procs[i] = p

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on %s:%d with %d worker processes", settings.host, settings.port, workers)
    for i in range(workers):
        start(i)
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping:
                    log.error("API worker %d (pid %s) exited with %s; restarting it", i, p.pid, p.exitcode)
                    _mark_dead(metrics_dir, p.pid)
                    time.sleep(RESTART_PAUSE_SECONDS)
                    if not stopping:
                        start(i)
    finally:
        for p in procs.values():
            if p.is_alive() and p.pid is not None:
                p.terminate()  # SIGTERM: uvicorn finishes in-flight requests and runs the lifespan's exit
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for p in procs.values():
            p.join(timeout=max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        sock.close()
        if created_dir is not None:
            shutil.rmtree(created_dir, ignore_errors=True)


def _mark_dead(directory: Path | None, pid: int | None) -> None:
    """Drop a dead worker's live gauges from the aggregate (its counters and histograms stay summed)."""
    if directory is None or pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))
