"""The event recorder: one timeline that every assertion, report and CLI reads.

Every component records what happened (a TLS handshake, an upgrade, an auth verdict, an
MQTT packet, a fault, a Cognito call) as an :class:`Event` with ``t`` (seconds since the
world started, monotonic), a dotted ``kind`` and a connection id ``conn`` where there is
one. The JSONL shape is the contract of DESIGN.md ("Events JSONL").

Secrets never reach the timeline: values of fields named like secrets are replaced, and
any string registered with :meth:`Recorder.add_secret` is scrubbed from every string
value (also in its percent-encoded form), so an explanation that quotes a signed URL
cannot leak a session token.
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
    """Collects events in memory, optionally appends them to a JSONL file, wakes waiters."""

    def __init__(self, *, clock: WorldClock | None = None, path: Path | None = None) -> None:
        self.clock = clock or WorldClock()
        self.events: list[Event] = []
        self._secrets: set[str] = set()
        self._short_secrets: set[str] = set()
        self._short_pattern: re.Pattern[str] | None = None
        self._waiters: list[tuple[Predicate, asyncio.Future[Event]]] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._file: IO[str] | None = None
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")

    # Secrets

    def add_secret(self, value: str | None) -> None:
        """Scrub ``value`` (and its percent-encoded forms) from every future event.

        A short value (under 8 characters: a 6-digit OTP, say) is scrubbed only where it
        stands as a word of its own, so it cannot mangle the account id or a timestamp
        that happens to contain it. Fields named like secrets (:data:`SECRET_FIELDS`, e.g.
        ``otp``) are redacted whatever their length.
        """
        if not value or len(value) < 4:
            return
        if len(value) < 8:
            self._short_secrets.add(value)
            self._short_pattern = re.compile(
                r"(?<![0-9A-Za-z])(?:"
                + "|".join(re.escape(v) for v in sorted(self._short_secrets, key=len, reverse=True))
                + r")(?![0-9A-Za-z])"
            )
            return
        self._secrets.add(value)
        self._secrets.add(urllib.parse.quote(value, safe=""))
        self._secrets.add(urllib.parse.quote(value, safe="/"))

    def _clean(self, name: str, value: Any) -> Any:
        if name.lower() in SECRET_FIELDS and value is not None:
            return REDACTED
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, Mapping):
            return {str(k): self._clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean("", v) for v in value]
        if isinstance(value, bytes):
            return self.scrub(value.decode("utf-8", "backslashreplace"))
        return value

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``<redacted>``."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        if self._short_pattern is not None:
            text = self._short_pattern.sub(REDACTED, text)
        return text

    # Recording

    def record(self, kind: str, *, conn: str | None = None, **fields: Any) -> Event:
        event = Event(
            t=self.clock.elapsed(),
            kind=kind,
            conn=conn,
            fields={name: self._clean(name, value) for name, value in fields.items()},
        )
        self.events.append(event)
        if self._file is not None:
            self._file.write(json.dumps(event.to_json(), default=str) + "\n")
            self._file.flush()
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

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` for every new event; returns a function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # Reading

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self.events))

    def __len__(self) -> int:
        return len(self.events)

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
        """The first event from index ``since`` on that matches; waits up to ``timeout``.

        Raises ``TimeoutError`` naming what was awaited and the last few events.
        """

        def check(event: Event) -> bool:
            return event.matches(kind, **expected) and (predicate is None or predicate(event))

        for event in self.events[since:]:
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
        if self._file is not None:
            self._file.close()
            self._file = None
