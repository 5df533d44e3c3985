"""``python -m infera_runtime``: read settings, serve HTTP, load the engine, drain on SIGTERM.

Start-up: the HTTP server listens at once (``/health/live`` answers, ``/health/startup`` and
``/health/ready`` say 503) while the engine loads; then readiness turns on.
A fatal start-up error (bad settings, unreadable key file, the model fails to load, the port is
taken) writes one line to ``termination_log`` (when writable), is logged, and exits 1.
SIGTERM (or SIGINT): readiness goes false at once and new API requests get 503; admitted
requests get ``shutdown_grace_s`` to finish, the rest are aborted; then the server and the
engine stop and the process exits 0. A second signal skips the wait. If the engine dies while
serving, the process exits 1 (after writing the termination log) so the pod restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from .settings import RuntimeSettings, SettingsError, load_settings

log = logging.getLogger("infera.main")
HEALTH_CHECK_INTERVAL_S = 2.0


class FatalError(Exception):
    """A reason to exit non-zero, written to the termination log."""


def write_termination_log(path: Path | None, reason: str) -> None:
    if path is None:
        return
    line = " ".join(reason.split())[:4000] + "\n"
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(line)
    except OSError:
        pass


def fatal(settings_path: Path | None, reason: str) -> int:
    from .logs import redact

    reason = redact(reason)
    write_termination_log(settings_path, reason)
    log.critical("fatal: %s", reason)
    return 1


async def serve(settings: RuntimeSettings) -> int:
    import uvicorn

    from .app import Runtime, create_app
    from .auth import ApiKeys, KeyFileError
    from .engine import make_backend
    from .logs import reassert_root_level

    try:
        keys = ApiKeys(settings.api_key_file) if settings.api_key_file is not None else None
        backend = make_backend(settings)
    except (KeyFileError, ValueError) as exc:
        return fatal(settings.termination_log, str(exc))
    runtime = Runtime(settings, backend, keys)
    app = create_app(runtime)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # signals are ours (drain first)
            yield

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=30,
        server_header=False,
    )
    server = Server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        log.info("received %s", sig.name)
        runtime.begin_drain()
        stop.set()
        if signals > 1:
            log.warning("second signal: stopping now")
            runtime.cancel_all("shutdown")
            server.should_exit = True
            server.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    async def run_http() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise FatalError(f"exit {exc.code}") from None

    server_task = asyncio.create_task(run_http(), name="http")
    load_task = asyncio.create_task(runtime.load_engine(), name="engine-load")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    code = 0
    try:
        done, _ = await asyncio.wait({server_task, load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if server_task in done:
            return fatal(
                settings.termination_log,
                f"HTTP server stopped: cannot serve on {settings.host}:{settings.port}",
            )
        load_error = load_task.exception() if load_task in done else None
        if load_error is not None:
            return fatal(
                settings.termination_log,
                f"model {settings.model} failed to load: {load_error.__class__.__name__}: {load_error}",
            )
        if load_task in done:
            reassert_root_level(settings.log_level)
            log.info("ready", extra={"model": settings.model_name, "port": settings.port})
            watch = asyncio.create_task(_watch_engine(runtime), name="engine-watch")
            done, _ = await asyncio.wait({server_task, stop_task, watch}, return_when=asyncio.FIRST_COMPLETED)
            watch.cancel()
            if watch in done and not watch.cancelled():
                code = fatal(settings.termination_log, "the engine died")
                runtime.begin_drain()
                runtime.cancel_all("shutdown")
            elif server_task in done:
                return fatal(
                    settings.termination_log,
                    f"HTTP server stopped: cannot serve on {settings.host}:{settings.port}",
                )
        # Draining (signal) or dying (engine): finish or abort in-flight requests.
        if code == 0:
            finished = await runtime.drain(settings.shutdown_grace_s)
            log.info("drained", extra={"all_finished": finished})
        return code
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(server_task, 10)
        if not load_task.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(load_task, 60)
        with contextlib.suppress(BaseException):
            await runtime.backend.shutdown()
        stop_task.cancel()
        log.info("stopped")


async def _watch_engine(runtime: object) -> None:
    from .app import Runtime

    assert isinstance(runtime, Runtime)
    while runtime.backend.is_healthy():  # noqa: ASYNC110 - vLLM offers no event for engine death
        await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    from .logs import configure_logging

    try:
        settings = load_settings()
    except SettingsError as exc:
        configure_logging("json", "info")
        path = os.environ.get("INFERA_TERMINATION_LOG", "/dev/termination-log")
        return fatal(Path(path), str(exc))
    configure_logging(settings.log_format, settings.log_level)
    log.info(
        "starting",
        extra={
            "model": settings.model,
            "served_model_name": settings.model_name,
            "engine": settings.engine,
            "port": settings.port,
            "auth": settings.api_key_file is not None,
        },
    )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
