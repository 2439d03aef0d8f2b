"""The event recorder: one timeline that every assertion, report and CLI reads.

Every component records what happened (a TLS handshake, an upgrade, an auth verdict, an
MQTT packet, a fault, a Cognito call) as an :class:`Event` with ``t`` (seconds since the
world started, monotonic), a dotted ``kind`` and a connection id ``conn`` where there is
one. The JSONL shape is the contract of DESIGN.md ("Events JSONL").

Secrets never reach the timeline: values of fields named like secrets are replaced, and
any string registered with :meth:`Recorder.add_secret` is scrubbed from every string
value (also in its percent-encoded form), so an explanation that quotes a signed URL
cannot leak a session token.

The recorder sits on every packet's path, so it is built for that (issue [bench]): the
JSONL lines of one event-loop turn are written together at the end of the turn (a reader
of the file sees them at most one turn late, and always after :meth:`Recorder.close`);
secrets are found with an index (:class:`SecretScrubber`), not one scan per secret, so a
world that minted thousands of credentials records as fast as a new one; and a long-running
recorder (``keep=``) holds only the newest events in memory while the file keeps them all.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness.clock import WorldClock

REDACTED = "<redacted>"

#: Field names whose values are always secret, whatever they hold.
SECRET_FIELDS = frozenset(
    {
        "secret",
        "secret_access_key",
        "secretkey",
        "session_token",
        "sessiontoken",
        "token",
        "tokenvalue",
        "token_value",
        "signature",
        "tokensignature",
        "token_signature",
        "password",
        "otp",
        "private_key",
        "authorization",
        "x-amz-security-token",
        "x-amz-signature",
        "x-amz-customauthorizer-signature",
    }
)

Predicate = Callable[["Event"], bool]

#: Values recorded as they are: nothing secret can hide in a number or a flag.
_PLAIN_TYPES = frozenset({bool, int, float, type(None)})


class SecretScrubber:
    """Replaces every registered secret in a string by ``<redacted>``.

    Long secrets (16 characters and more: session tokens, secret keys, signatures,
    passwords of real length) are found through an index of their 8-character windows
    at offsets 0-7: any occurrence of such a secret in a text covers a window of the text
    that starts at a multiple of 8, so looking up ``len(text) / 8`` windows finds every
    candidate, whatever the number of secrets. The few medium ones (8-15 characters) are
    searched one by one, and short ones (a 6-digit OTP) only as whole words, so they
    cannot mangle an account id or a timestamp that happens to contain them.
    """

    WINDOW = 8
    LONG = 2 * WINDOW

    def __init__(self) -> None:
        self._windows: dict[str, list[str]] = {}
        self._long: set[str] = set()
        self._medium: list[str] = []
        self._short: set[str] = set()
        self._short_pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        """Register ``value`` (ignored under 4 characters: too common to be a secret)."""
        if len(value) < 4:
            return
        if len(value) < self.WINDOW:
            self._short.add(value)
            self._short_pattern = re.compile(
                r"(?<![0-9A-Za-z])(?:"
                + "|".join(re.escape(v) for v in sorted(self._short, key=len, reverse=True))
                + r")(?![0-9A-Za-z])"
            )
            return
        if len(value) < self.LONG:
            if value not in self._medium:
                self._medium.append(value)
                self._medium.sort(key=len, reverse=True)
            return
        if value in self._long:
            return
        self._long.add(value)
        for offset in range(self.WINDOW):
            self._windows.setdefault(value[offset : offset + self.WINDOW], []).append(value)

    def __call__(self, text: str) -> str:
        if self._windows and len(text) >= self.LONG:
            found: set[str] = set()
            windows = self._windows
            size = self.WINDOW
            for start in range(0, len(text) - size + 1, size):
                candidates = windows.get(text[start : start + size])
                if candidates is not None:
                    found.update(c for c in candidates if c in text)
            for secret in sorted(found, key=len, reverse=True):
                text = text.replace(secret, REDACTED)
        for secret in self._medium:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._short_pattern is not None:
            text = self._short_pattern.sub(REDACTED, text)
        return text


@dataclass(frozen=True)
class Event:
    """One thing that happened in the world."""

    t: float
    kind: str
    conn: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    @property
    def ok(self) -> bool | None:
        value = self.fields.get("ok")
        return value if isinstance(value, bool) else None

    @property
    def reason(self) -> str | None:
        value = self.fields.get("reason")
        return value if isinstance(value, str) else None

    def matches(self, kind: str | None = None, **expected: Any) -> bool:
        """True when ``kind`` (exact, or a prefix ending in ``.``) and every field match."""
        if kind is not None and not (
            self.kind == kind or (kind.endswith(".") and self.kind.startswith(kind))
        ):
            return False
        for name, value in expected.items():
            actual = self.conn if name == "conn" else self.fields.get(name)
            if actual != value:
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 6), "kind": self.kind}
        if self.conn is not None:
            out["conn"] = self.conn
        out.update(self.fields)
        return out

    def __str__(self) -> str:
        extras = " ".join(f"{k}={v!r}" for k, v in self.fields.items())
        conn = f" [{self.conn}]" if self.conn else ""
        return f"{self.t:9.3f} {self.kind}{conn} {extras}".rstrip()


class Recorder:
    """Collects events in memory, optionally appends them to a JSONL file, wakes waiters.

    ``keep`` bounds the events held in memory (the newest ``keep`` or a few more are
    kept; ``None``, the default, keeps all, as scenario expectations need). ``len()``
    counts every event recorded, and ``wait_for(since=...)`` takes such a count, so
    both mean the same with or without a bound.
    """

    def __init__(
        self,
        *,
        clock: WorldClock | None = None,
        path: Path | None = None,
        keep: int | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 event, got {keep}")
        self.clock = clock or WorldClock()
        self.events: list[Event] = []
        self.keep = keep
        self.dropped = 0
        self._scrub = SecretScrubber()
        self._secret_names: dict[str, bool] = {}
        self._waiters: list[tuple[Predicate, asyncio.Future[Event]]] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._file: IO[str] | None = None
        self._unwritten: list[Event] = []
        self._write_loop: asyncio.AbstractEventLoop | None = None
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    # Secrets

    def add_secret(self, value: str | None) -> None:
        """Scrub ``value`` (and its percent-encoded forms) from every future event.

        A short value (under 8 characters: a 6-digit OTP, say) is scrubbed only where it
        stands as a word of its own (see :class:`SecretScrubber`). Fields named like
        secrets (:data:`SECRET_FIELDS`, e.g. ``otp``) are redacted whatever their length.
        """
        if not value:
            return
        self._scrub.add(value)
        if len(value) >= SecretScrubber.WINDOW:
            self._scrub.add(urllib.parse.quote(value, safe=""))
            self._scrub.add(urllib.parse.quote(value, safe="/"))

    def _is_secret_name(self, name: str) -> bool:
        known = self._secret_names.get(name)
        if known is None:
            known = self._secret_names[name] = name.lower() in SECRET_FIELDS
        return known

    def _clean(self, name: str, value: Any) -> Any:
        if type(value) in _PLAIN_TYPES:
            return value
        if self._is_secret_name(name):
            return REDACTED
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, Mapping):
            return {str(k): self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        if isinstance(value, bytes):
            return self._scrub(value.decode("utf-8", "backslashreplace"))
        return value

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``<redacted>``."""
        return self._scrub(text)

    # Recording

    def record(self, kind: str, *, conn: str | None = None, **fields: Any) -> Event:
        clean = self._clean
        event = Event(
            t=self.clock.elapsed(),
            kind=kind,
            conn=conn,
            fields={
                name: value if type(value) in _PLAIN_TYPES else clean(name, value)
                for name, value in fields.items()
            },
        )
        self.events.append(event)
        if self.keep is not None and len(self.events) > self.keep + self.keep // 4 + 1:
            # Dropping a quarter at a time keeps the cost per event constant.
            surplus = len(self.events) - self.keep
            del self.events[:surplus]
            self.dropped += surplus
        if self._file is not None:
            self._unwritten.append(event)
            self._schedule_write()
        for listener in list(self._listeners):
            listener(event)
        if self._waiters:
            still: list[tuple[Predicate, asyncio.Future[Event]]] = []
            for predicate, future in self._waiters:
                if future.done():
                    continue
                if predicate(event):
                    future.set_result(event)
                else:
                    still.append((predicate, future))
            self._waiters = still
        return event

    def _schedule_write(self) -> None:
        """Write at the end of this event-loop turn (now, outside an event loop). A write
        scheduled on a loop that ended before running it does not hold back the next."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._write_loop is loop:
            return
        self._write_loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the events recorded so far to the JSONL file."""
        self._write_loop = None
        if self._file is None or not self._unwritten:
            return
        lines = "".join(
            json.dumps(event.to_json(), default=str) + "\n" for event in self._unwritten
        )
        self._unwritten.clear()
        self._file.write(lines)
        self._file.flush()

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` for every new event; returns a function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # Reading

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        """Every event recorded, also those no longer held in memory (``keep``)."""
        return self.dropped + len(self.events)

    def find(self, kind: str | None = None, **expected: Any) -> list[Event]:
        return [e for e in self.events if e.matches(kind, **expected)]

    def first(self, kind: str | None = None, **expected: Any) -> Event | None:
        found = self.find(kind, **expected)
        return found[0] if found else None

    async def wait_for(
        self,
        kind: str | None = None,
        *,
        timeout: float,
        since: int = 0,
        predicate: Predicate | None = None,
        **expected: Any,
    ) -> Event:
        """The first event from index ``since`` on (a ``len()`` of this recorder) that
        matches; waits up to ``timeout``.

        Raises ``TimeoutError`` naming what was awaited and the last few events.
        """

        def check(event: Event) -> bool:
            return event.matches(kind, **expected) and (predicate is None or predicate(event))

        for event in self.events[max(since - self.dropped, 0) :]:
            if check(event):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((check, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            tail = "\n  ".join(str(e) for e in self.events[-8:]) or "(no events)"
            raise TimeoutError(
                f"no event {kind or '*'} {expected or ''} within {timeout:.2f}s; last events:\n  "
                f"{tail}"
            ) from None

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
