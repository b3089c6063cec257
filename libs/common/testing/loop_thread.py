"""An asyncio fake venue on its own event loop in a daemon thread, with blocking controls: the
plumbing shared by the fake Binance and the fake Alpaca data stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, Protocol, Self, TypeVar

T = TypeVar("T")


class AsyncFake(Protocol):
    """What a fake venue server offers its thread wrapper."""

    @property
    def url(self) -> str: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def drop_connections(self, abrupt: bool = True) -> int: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


F = TypeVar("F", bound=AsyncFake)


class FakeOnLoopThread(Generic[F]):
    """Runs the fake `make()` builds on a private event loop; every control blocks until done."""

    def __init__(self, make: Callable[[], F], name: str) -> None:
        self._make = make
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self.fake: F | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the loop thread and the server; returns once it listens."""
        self._thread.start()

        async def make() -> F:
            fake = self._make()
            await fake.start()
            return fake

        try:
            self.fake = asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout_s)
        except BaseException:
            self.close(timeout_s)  # e.g. the port is taken: leave no thread behind
            raise

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the server and the loop thread."""
        if self.fake is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.fake.stop(), self._loop).result(timeout_s)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def call(self, fn: Callable[[F], T], timeout_s: float = 10.0) -> T:
        """Run fn(fake) on the fake's loop and return its result."""
        fake = self._started()

        async def run() -> T:
            return fn(fake)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout_s)

    def _started(self) -> F:
        """The running fake."""
        assert self.fake is not None, "not started"
        return self.fake

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>: the fake's REST base."""
        return self._started().url

    def pause(self) -> None:
        """Stop sending stream data (connections stay open)."""
        self.call(lambda f: f.pause())

    def resume(self) -> None:
        """Send stream data again."""
        self.call(lambda f: f.resume())

    def drop_connections(self, abrupt: bool = True, timeout_s: float = 10.0) -> int:
        """Close every stream connection; how many there were."""
        coro = self._started().drop_connections(abrupt)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)
