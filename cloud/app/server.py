"""`iotsphere cloud serve`: uvicorn, one worker, in this process; exits 0 on SIGINT/SIGTERM.

uvicorn re-raises a captured signal after its graceful shutdown (so a plain `server.run()`
would end with KeyboardInterrupt / death by SIGTERM); we catch the signals ourselves, let
uvicorn drain in-flight requests, close the store and return normally.

While it listens, run/cloud.json in the data dir names it ({pid, port, bind}) and the local
admin secret exists: `cloud user add` / `cloud gateway add` then go through its local admin
API (cloud/api/local_admin.py), since DuckDB admits only this process as a writer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from uvicorn.supervisors import Multiprocess

from cloud.app.admin_ops import local_admin_secret, remove_run_info, write_run_info
from cloud.app.asgi import create_app
from cloud.app.services import Services, build_services, open_store
from cloud.app.settings import CloudSettings
from common.sd_notify import SdNotifier

log = logging.getLogger("iotsphere.cloud")
TlsFiles = tuple[str, str]  # (certificate, key), PEM files


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose signal handling ends serve() without re-raising the signal.

    With `run_info_dir` set (by serve(), not by in-process tests), it announces itself in that
    data dir's run/cloud.json once it listens.
    """

    run_info_dir: Path | None = None
    notifier: SdNotifier | None = None  # systemd Type=notify (serve() sets it)
    _watchdog: asyncio.Task[None] | None = None
    on_stopping: Callable[[], None] | None = None  # uvicorn_server: ends the event streams

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        try:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        except (RuntimeError, NotImplementedError, ValueError):  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything imported and built so far lives as long as the process: keep it out of
        # the collector's generations, whose full passes caused ~100 ms request stalls.
        gc.freeze()
        if self.started and self.run_info_dir is not None:
            tls = bool(self.config.ssl_certfile)
            write_run_info(self.run_info_dir, self._bound_port(), self.config.host, tls)
        if self.started:  # the marker scripts and tests wait for
            scheme = "https" if self.config.ssl_certfile else "http"
            log.info("cloud ready on %s://%s:%d", scheme, self.config.host, self.config.port)
        if self.started and self.notifier is not None:
            self.notifier.ready("cloud ready")
            self._watchdog = asyncio.create_task(self.notifier.watchdog(), name="sd-watchdog")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # live pages' event streams never finish by themselves: end them first, so the
        # graceful shutdown does not wait its whole timeout for them
        if self.on_stopping is not None:
            self.on_stopping()
        await super().shutdown(sockets)

    def _bound_port(self) -> int:
        """The port actually listened on (differs from the configured one for port 0)."""
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: shutting down", signal.Signals(sig).name)
        if self.notifier is not None:
            self.notifier.stopping()
        if self.should_exit:  # a second signal: stop waiting for in-flight requests
            self.force_exit = True
        self.should_exit = True


def uvicorn_server(
    services: Services,
    host: str,
    port: int,
    extra: Iterable[APIRouter] = (),
    tls: TlsFiles | None = None,
) -> GracefulServer:
    config = uvicorn.Config(
        create_app(services, extra),
        host=host,
        port=port,
        **_ssl_args(tls),
        workers=1,
        log_config=None,  # our logging setup (stderr, common format) stays in charge
        access_log=False,  # AccessMiddleware logs one structured line per request
        lifespan="on",  # starts/stops the monitoring loop and notification worker
        timeout_graceful_shutdown=10,
    )
    server = GracefulServer(config)
    if services.changes is not None:
        server.on_stopping = services.changes.close
    return server


def _ssl_args(tls: TlsFiles | None) -> dict[str, Any]:
    """uvicorn's TLS settings: `cloud serve --tls-cert FILE --tls-key FILE` (PEM)."""
    if tls is None:
        return {}
    for path in tls:
        if not Path(path).is_file():
            raise OSError(f"TLS file {path} does not exist")
    return {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}


SETTINGS_ENV = "IOTSPHERE_CLOUD_WORKER_SETTINGS"  # the parent's settings, for each worker


def worker_app() -> FastAPI:
    """One worker process's app (uvicorn's factory, in a spawned process): the store and
    services built from the settings the parent passed in its environment."""
    settings: CloudSettings = pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV]))
    store = open_store(settings)
    return create_app(build_services(settings, store), on_shutdown=store.close)


def serve_workers(settings: CloudSettings, workers: int, tls: TlsFiles | None = None) -> None:
    """N worker processes accepting on one socket, supervised by uvicorn (a worker that dies is
    started again; SIGINT/SIGTERM stops them all gracefully). PostgreSQL only: every piece of
    state is in the database, so any worker serves any request and the once-only work
    (alert evaluation, deliveries) is claimed there. Raises StoreError before any worker
    starts when the database cannot be opened or migrated."""
    store = open_store(settings)  # migrations run once, here, before the workers race
    try:
        build_services(settings, store)
    finally:
        store.close()
    os.environ[SETTINGS_ENV] = base64.b64encode(pickle.dumps(settings)).decode()
    config = uvicorn.Config(
        "cloud.app.server:worker_app",
        factory=True,
        host=settings.bind,
        port=settings.port,
        **_ssl_args(tls),
        workers=workers,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    sock = config.bind_socket()
    from cloud.storage.pg import redact  # psycopg, the postgres extra: only with --database

    log.info("starting cloud on %s:%d with %d workers (database %s)", settings.bind,
             settings.port, workers, redact(settings.database_url or ""))  # fmt: skip
    Multiprocess(config, sockets=[sock]).run()
    log.info("cloud stopped")


def serve(settings: CloudSettings, workers: int = 1, tls: TlsFiles | None = None) -> None:
    """Run until SIGINT/SIGTERM (HTTPS with `tls`: certificate and key files). Raises
    StoreError / OSError on start-up failures."""
    if workers > 1:
        serve_workers(settings, workers, tls)
        return
    _ssl_args(tls)  # a missing file: one line before the store opens
    store = open_store(settings)
    try:
        local_admin_secret(settings.data_dir)  # before run/cloud.json sends the CLI to us
        services = build_services(settings, store)
        server = uvicorn_server(services, settings.bind, settings.port, tls=tls)
        server.run_info_dir = settings.data_dir
        server.notifier = SdNotifier.from_env()
        # "cloud ready" is logged by GracefulServer.startup once the socket listens (scripts
        # and tests wait for it), not here, before it does.
        log.info("starting cloud on %s:%d (data dir %s)", settings.bind, settings.port,
                 settings.data_dir)  # fmt: skip
        server.run()
        if not server.started:
            raise OSError(f"could not listen on {settings.bind}:{settings.port}")
    finally:
        remove_run_info(settings.data_dir)  # from now on the CLI opens the store itself
        store.close()
    log.info("cloud stopped")
