"""What every reference app's asyncio shell shares: the inbox, workers, events and stopping.

An app is a pure state machine (``*_machine.py``) and a shell around it. The shell feeds the
machine one input at a time: results of its worker tasks (a credential fetch, a connection
attempt, a connection's end) arrive in the :class:`AppRuntime` inbox, and a ``Tick`` when
the machine's ``wake_at`` has come. Workers never decide; they do one thing and report.

Every event the app records is a ``client.*`` event with the field ``app`` (the app's
label), so several apps in one world stay apart on the timeline (DESIGN.md, "One
timeline"). Secrets the app holds are registered with the recorder before they could
appear anywhere (:meth:`AppRuntime.secret`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from harness.events import Event, Recorder

__all__ = ["AppRuntime"]

InputT = TypeVar("InputT")


class AppRuntime(Generic[InputT]):
    """The inbox, the worker tasks and the recorder of one running app."""

    def __init__(self, *, recorder: Recorder, label: str) -> None:
        self.recorder = recorder
        self.label = label
        self.inbox: asyncio.Queue[InputT] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop = asyncio.get_running_loop()

    def now(self) -> float:
        """Monotonic seconds: the machines' time (timers, never wall-clock dates)."""
        return self.loop.time()

    def record(self, kind: str, **fields: Any) -> Event:
        return self.recorder.record(kind, app=self.label, **fields)

    def secret(self, *values: str | None) -> None:
        for value in values:
            self.recorder.add_secret(value)

    def post(self, item: InputT) -> None:
        self.inbox.put_nowait(item)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a worker; an exception in it is recorded (``client.bug``), never lost."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.record("client.bug", error=f"{type(exc).__name__}: {exc}")

    async def wait_input(
        self, stop: asyncio.Event, wake_at: float | None, tick: InputT
    ) -> InputT | None:
        """The next inbox item; ``tick`` once ``wake_at`` has come; ``None`` after ``stop``."""
        if stop.is_set():
            return None
        if not self.inbox.empty():
            return self.inbox.get_nowait()
        timeout = None if wake_at is None else max(0.0, wake_at - self.now())
        if timeout == 0.0:
            return tick
        getter = asyncio.ensure_future(self.inbox.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done or (getter.done() and not getter.cancelled()):
            item = getter.result()
            if stop.is_set():
                self.inbox.put_nowait(item)  # keep it; nobody reads it after stop anyway
                return None
            return item
        if stopper in done:
            return None
        return tick

    async def close(self) -> None:
        """Cancel every worker and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
