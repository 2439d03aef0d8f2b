"""Reference client apps built from the project's two field designs (issue [clients]).

Each app is a real paho-mqtt 2.x client under test, configured only by the world
descriptor (DESIGN.md, contract 1) and its options, recording ``client.*`` events on the
world's recorder:

================================ ==========================================================
``browser-player``               Cognito + SigV4 WebSocket player, field design 000 done
                                 right (:mod:`simulators.apps.player`)
``browser-player-as-written``    the same design with its mistakes (FB-34, FB-23, no backoff)
``dyson-app``                    Dyson cloud login, IoT credentials, cloud over WSS with
                                 the custom-authorizer headers and local MQTT with fallback
                                 both ways, field design 001 done right
                                 (:mod:`simulators.apps.dyson_app`)
``dyson-app-as-written``         the same design with its mistakes (FB-35, FB-22, FB-03,
                                 FB-06, FB-21)
================================ ==========================================================

Use::

    app = create_app("browser-player", descriptor=world.descriptor(),
                     options={"topic": "players/#"}, recorder=world.recorder)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    ...
    stop.set(); await task

``run`` returns once ``stop`` is set (or when cancelled); network failures never escape
it: they are ``client.*`` events followed by the retries the app's design prescribes. Bad
options or a descriptor without what the app needs raise
:class:`~harness.errors.ConfigError` from :func:`create_app`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from harness.errors import ConfigError
from harness.events import Recorder

__all__ = ["APP_NAMES", "App", "create_app"]

APP_NAMES = ("browser-player", "browser-player-as-written", "dyson-app", "dyson-app-as-written")


class App(Protocol):
    """A running reference app."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


def create_app(
    name: str,
    *,
    descriptor: Mapping[str, Any],
    options: Mapping[str, Any],
    recorder: Recorder,
) -> App:
    """Build the app ``name`` (one of :data:`APP_NAMES`) for this world; nothing runs yet.

    Raises :class:`~harness.errors.ConfigError` for an unknown name, an unknown or bad
    option, or a descriptor that lacks what the app needs (each naming the key).
    """
    if name in ("browser-player", "browser-player-as-written"):
        from simulators.apps.player import BrowserPlayer

        return BrowserPlayer(name, descriptor=descriptor, options=options, recorder=recorder)
    if name in ("dyson-app", "dyson-app-as-written"):
        from simulators.apps.dyson_app import DysonApp

        return DysonApp(name, descriptor=descriptor, options=options, recorder=recorder)
    raise ConfigError(f"unknown app {name!r}; known: {', '.join(APP_NAMES)}")
