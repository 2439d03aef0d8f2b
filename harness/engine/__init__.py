"""MQTT routing engines behind the gateway.

The gateway authenticates, enforces AWS's rules and then hands each accepted MQTT
connection to an engine that does the routing (DESIGN.md "Real parts"):

* :class:`AmqttEngine` (default): amqtt's broker in the same process, fed through its
  ``external`` listener hand-off (``Broker.external_connected``) over in-memory pipes, so
  there is no extra network hop.
* :class:`ExternalEngine`: any MQTT 3.1.1 broker over TCP (``mqtt://host:port``), e.g.
  Debian's mosquitto, for scale and differential tests.

Both give the gateway an :class:`EngineLink` per client: bytes from the client go in with
``write``, bytes for the client come out of ``read``.
"""

from __future__ import annotations

from harness.engine.amqtt_engine import AmqttEngine
from harness.engine.base import Engine, EngineLink
from harness.engine.external import ExternalEngine, engine_from_url

__all__ = ["AmqttEngine", "Engine", "EngineLink", "ExternalEngine", "engine_from_url"]
