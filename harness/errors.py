"""The harness's exception tree, split by whose fault it is (STYLE.md §3).

::

    HarnessError                  base of everything the harness raises on purpose
    ├── ConfigError               the harness was misused: bad option, scenario, descriptor
    │   └── ScenarioError         a scenario file that does not load (file, line, field)
    └── ProtocolError             a peer sent something invalid; carries a stable ``reason``
        ├── MalformedPacket       MQTT bytes that are not a valid packet (harness.mqtt.codec)
        └── MalformedRequest      an HTTP/WebSocket upgrade the auth core cannot parse

What a *client under test* does wrong is never a crash of the harness: the shells catch
``ProtocolError``, answer as AWS would, and record an event explaining why.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of every exception the harness raises deliberately."""


class ConfigError(HarnessError):
    """The harness itself was configured or called wrongly (the user's test is at fault)."""


class ProtocolError(HarnessError):
    """A peer sent something the protocol does not allow.

    ``reason`` is a stable kebab-case code (used in events and expectations); the message
    is a sentence for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.reason}]"


class MalformedPacket(ProtocolError):
    """Bytes that cannot be an MQTT packet (MQTT 3.1.1 §4.8: the server closes the connection)."""


class MalformedRequest(ProtocolError):
    """An upgrade request the authentication core cannot parse."""
