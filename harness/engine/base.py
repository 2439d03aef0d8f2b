"""The interface every engine offers the gateway's session pump."""

from __future__ import annotations

from typing import Protocol


class EngineLink(Protocol):
    """One client's MQTT byte stream to and from the engine."""

    def write(self, data: bytes) -> None:
        """Bytes from the client to the engine: one complete MQTT packet per call."""

    async def read(self) -> bytes:
        """The next bytes from the engine for the client; ``b""`` once the engine closed."""

    async def close(self) -> None:
        """Tell the engine the client is gone (as a dropped TCP connection would).

        After a DISCONNECT was written, the engine must see it as the clean end it is:
        no Will, and what the client published before it still routed (MQTT 3.1.1 §3.14).
        """


class Engine(Protocol):
    """Something that accepts MQTT connections and routes messages between them."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def connect(self, *, peer: tuple[str, int]) -> EngineLink:
        """A new link for a client at ``peer`` whose CONNECT is about to be written."""
        ...

    async def publish_system(self, topic: str, payload: bytes) -> None:
        """Publish as AWS itself (QoS 0), e.g. ``$aws/events/presence/...`` (aws-iot.md §4.6).

        Clients may not publish to ``$`` topics (MQTT 3.1.1 §4.7.2), so the engine offers
        the gateway its own way in.
        """
        ...
