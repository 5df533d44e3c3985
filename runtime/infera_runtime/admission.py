"""Admission control: at most ``max_inflight`` requests in the engine, ``max_queue`` waiting.

A request beyond both limits is refused at once with a 429 (``Retry-After``). Waiting requests
are admitted first in, first out as running ones finish. A waiter is a plain future, so
admission costs no task and no lock; the fast path (a free slot, nobody queued) awaits nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable

from .errors import RateLimitError


class Admission:
    def __init__(
        self,
        max_inflight: int,
        max_queue: int,
        on_change: Callable[[int, int], None] | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._on_change = on_change
        self._idle: asyncio.Event | None = None

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.inflight, len(self._waiters))
        if self._idle is not None and self.inflight == 0 and not self._waiters:
            self._idle.set()

    def new_waiter(self) -> asyncio.Future[None] | None:
        """Take a slot now (return None) or queue (return the future to await); 429 when full.

        The caller awaits the future; if it gives up (cancel), it must call :meth:`forget`.
        """
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            self._changed()
            return None
        if len(self._waiters) >= self.max_queue:
            raise RateLimitError(
                f"The server is at capacity ({self.max_inflight} requests running, "
                f"{len(self._waiters)} queued). Retry later.",
                retry_after_s=self.retry_after_s,
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._changed()
        return fut

    def forget(self, fut: asyncio.Future[None]) -> None:
        """A queued caller gave up: drop its place, or hand back the slot it was just given."""
        if fut.done() and not fut.cancelled():
            self.release()
            return
        with contextlib.suppress(ValueError):
            self._waiters.remove(fut)
        self._changed()

    async def acquire(self) -> None:
        fut = self.new_waiter()
        if fut is None:
            return
        try:
            await fut
        except BaseException:
            self.forget(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to the next waiter
                self._changed()
                return
        self.inflight -= 1
        self._changed()

    async def wait_idle(self) -> None:
        """Return once nothing is running or queued."""
        if self.inflight == 0 and not self._waiters:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()
