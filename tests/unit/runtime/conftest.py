"""Runtime unit-test fixtures: the real app over the synthetic engine, served by a real uvicorn
on a loopback port inside the test's event loop (so streaming and disconnects are real)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from infera_runtime.app import Runtime, create_app
from infera_runtime.auth import ApiKeys
from infera_runtime.engine import make_backend
from infera_runtime.settings import RuntimeSettings

MODEL = "tiny"


@dataclass
class LiveServer:
    runtime: Runtime
    url: str
    client: httpx.AsyncClient

    @property
    def engine(self) -> Any:
        return self.runtime.backend.engine


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@contextlib.asynccontextmanager
async def live_server(
    *, load: bool = True, api_key_file: Path | None = None, **overrides: Any
) -> AsyncIterator[LiveServer]:
    settings = RuntimeSettings(
        model=f"/models/{MODEL}", engine="synthetic", api_key_file=api_key_file, **overrides
    )
    keys = ApiKeys(api_key_file) if api_key_file is not None else None
    runtime = Runtime(settings, make_backend(settings), keys)
    if load:
        await runtime.load_engine()
    app = create_app(runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield LiveServer(runtime, url, client)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await runtime.backend.shutdown()
        sock.close()


@pytest.fixture
def server_factory() -> Callable[..., Any]:
    return live_server


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    async with live_server() as s:
        yield s
