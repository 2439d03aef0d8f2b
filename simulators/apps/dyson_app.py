"""The Dyson cloud + local app (field design 001), done right and as written.

``dyson-app`` reaches one Dyson device the way ``field-designs/001_*.txt`` intends, with
the fixes the field reports call for:

1. The Dyson cloud login (dyson.md §6; :mod:`simulators.apps.dyson_api`): version call,
   ``userstatus``, ``auth`` → ``challengeId``, ``verify`` with the OTP → Bearer; the v3
   manifest; the device's ``localBrokerCredentials`` decrypted to its local password
   (:func:`simulators.dyson.credentials.decrypt_local_credentials`, dyson.md §1.2) and its
   root topic from ``mqttRootTopicLevel`` (§2: ``438M`` is not ``438``).
2. IoT credentials (``POST /v2/authorize/iot-credentials``) before every cloud attempt.
3. **Cloud**: paho-mqtt 2.x over WSS to the ``Endpoint`` (dialled at the descriptor's
   ``iot.connect_host:iot.wss_port``, TLS verified for the endpoint), the credentials as
   WebSocket upgrade headers ``token``, ``X-Amz-CustomAuthorizer-Name``,
   ``X-Amz-CustomAuthorizer-Signature`` plus ``Host: <Endpoint>``, client id = ``ClientId``
   (dyson.md §7, aws-iot.md §2.5).
4. **Local**: paho-mqtt over TCP to the device's ``local_host:local_port`` from the
   descriptor, username = serial, password = ``apPasswordHash``, MQTT 3.1 or 3.1.1
   (dyson.md §1.1), a stable client id ``sha256(instance_id + serial)[:23]`` (hass-dyson,
   FB-06).
5. On either path: SUBSCRIBE to ``status/current``, ``status/faults`` and
   ``status/connection`` under ``<root>/<serial>/``, then REQUEST-CURRENT-STATE on
   ``command`` (dyson.md §2, §4).
6. Which path, fallback both ways, the return to the preferred path and the retries:
   :mod:`simulators.apps.dyson_machine`.

``dyson-app-as-written`` keeps the design's mistakes, each a name in ``mistakes``
(default: all of them) and prefers the cloud, as the design does ("Primary: AWS IoT
WebSocket"):

* ``token-in-path`` (FB-35): ``/mqtt?token=<TokenValue>&signature=<TokenSignature>``, no
  custom-authorizer headers: AWS answers 101, then closes after CONNECT;
* ``design-client-id`` (FB-35): cloud client id ``dyson-ha-cloud-<serial>-<8 hex>`` instead
  of ``ClientId``;
* ``no-callback-api-version`` (FB-21, FB-01): the cloud paho client is built without
  ``callback_api_version``; paho 2.x warns and calls VERSION1 signatures, so the
  VERSION2-shaped disconnect handler breaks (``client.problem`` {what: callback-error})
  and the app never notices the cloud link dropped;
* ``iot-credentials-once`` (FB-22): IoT credentials fetched once, replayed forever;
* ``no-startup-fallback`` (FB-03): during startup only the preferred path is tried;
* ``random-local-client-id`` (FB-06): a new random local client id every attempt.

Options (all optional; times in seconds, compressed time welcome):

======================== =============== ===================================================
``device``               first device    the serial to connect to
``preferred``            ``local-first`` ``local-first`` or ``cloud-first`` (as-written:
                                         ``cloud-first``)
``backoff_base``         30.0            first per-path failure backoff (hass-dyson 30 s)
``backoff_max``          300.0           its cap (hass-dyson 300 s)
``jitter``               0.5             random fraction of each delay
``login_backoff_base``   1.0             first login retry delay; cap ``backoff_max``
``return_after``         300.0           seconds on the fallback before trying the preferred
                                         path again (hass-dyson 300 s)
``stable_after``         5.0             a link up this long is healthy
``min_connect_interval`` 1.0             spacing of cloud CONNECTs (aws-iot.md §4.4)
``connect_timeout``      5.0             CONNACK wait per attempt (hass-dyson 5 s)
``keepalive``            60              MQTT keep-alive of both links
``local_protocol``       ``3.1``         ``3.1`` (libdyson, thoukydides) or ``3.1.1``
``cloud_protocol``       ``3.1.1``       as hass-dyson; ``3.1`` as thoukydides
``instance_id``          fixed           the stable local client id's seed
``http_timeout``         5.0             Dyson cloud call timeout
``request_state``        true            publish REQUEST-CURRENT-STATE after subscribing
``seed``                 none            seed of the jitter's random numbers
``mistakes``             all             as-written only: which mistakes to keep
======================== =============== ===================================================

Events (all with ``app``): ``client.login`` {ok, serial, devices, local, cloud, root,
reason, error}, ``client.credentials`` {source: dyson-cloud, ok, client_id, endpoint,
cached, reason}, ``client.connect`` {path, attempt, url_host, client_id, ok, reason,
error}, ``client.connected`` {path}, ``client.subscribed`` {path, granted},
``client.message`` {path, topic, msg}, ``client.disconnected`` {path, rc, deliberate},
``client.fallback`` {from, to}, ``client.return`` {from, to}, ``client.backoff`` {delay,
why}, ``client.error`` {stage, reason, error}, ``client.problem`` {path, what, detail},
``client.stopped``. Secrets (password, OTP, Bearer, local password, token signature) are
registered with the recorder; ``TokenValue`` is the cloud client id and stays visible, as
the gateway's events show it anyway (simulators.dyson.cloud_api).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import random
import ssl
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.events import Recorder
from simulators.apps.backoff import Backoff
from simulators.apps.dyson_api import DysonApiError, DysonCloudClient, IssuedIot
from simulators.apps.dyson_machine import (
    Action,
    Close,
    Connect,
    DysonMachine,
    DysonPolicy,
    FetchIot,
    Input,
    IotFailed,
    IotReady,
    LinkDown,
    LinkFailed,
    LinkUp,
    Login,
    LoginFailed,
    LoginOk,
    Path,
    Phase,
    Start,
    Switch,
    Tick,
    Wait,
)
from simulators.apps.mqtt_link import (
    PROTOCOLS,
    LinkClosed,
    LinkMessage,
    LinkOutcome,
    LinkProblem,
    LinkSpec,
    LinkSubscribed,
    MqttLink,
)
from simulators.apps.options import OptionReader, descriptor_section, descriptor_value
from simulators.apps.runtime import AppRuntime
from simulators.dyson.credentials import LocalCredentialsError, decrypt_local_credentials

__all__ = ["DYSON_MISTAKES", "DysonApp", "DysonAppConfig", "local_client_id"]

DYSON_MISTAKES = (
    "token-in-path",
    "design-client-id",
    "no-callback-api-version",
    "iot-credentials-once",
    "no-startup-fallback",
    "random-local-client-id",
)
#: The WebSocket port clients hard-code for the cloud (dyson.md §1.1).
WSS_PORT = 443
#: The stable client id's seed when the options give none (one "installation").
DEFAULT_INSTANCE_ID = "iot-harness-dyson-app"


def local_client_id(instance_id: str, serial: str) -> str:
    """hass-dyson's stable local id: ``sha256(instance + serial)[:23]`` (dyson.md §1.3)."""
    return hashlib.sha256(f"{instance_id}{serial}".encode()).hexdigest()[:23]


@dataclass(frozen=True, kw_only=True)
class DysonAppConfig:
    """Everything the app needs, from the descriptor and the options."""

    # The world
    connect_host: str
    wss_port: int
    ca_file: str
    api_url: str
    email: str
    password: str = field(repr=False)
    otp: str = field(repr=False)
    serial: str | None
    local_host: str | None
    local_port: int
    # MQTT
    keepalive: int = 60
    connect_timeout: float = 5.0
    http_timeout: float = 5.0
    local_protocol: str = "3.1"
    cloud_protocol: str = "3.1.1"
    instance_id: str = DEFAULT_INSTANCE_ID
    request_state: bool = True
    # Behaviour
    policy: DysonPolicy = field(default_factory=DysonPolicy)
    mistakes: frozenset[str] = frozenset()
    seed: int | None = None

    @classmethod
    def from_inputs(
        cls, app: str, descriptor: Mapping[str, Any], options: Mapping[str, Any]
    ) -> DysonAppConfig:
        as_written = app.endswith("-as-written")
        iot = descriptor_section(descriptor, "iot", app)
        dyson = descriptor_section(descriptor, "dyson", app)
        o = OptionReader(app, options)
        mistakes = (
            o.names("mistakes", DYSON_MISTAKES, DYSON_MISTAKES) if as_written else frozenset()
        )
        preferred = o.choice(
            "preferred",
            "cloud-first" if as_written else "local-first",
            ("local-first", "cloud-first"),
        )
        cap = o.seconds("backoff_max", 300.0, positive=True)
        policy = DysonPolicy(
            preferred="local" if preferred == "local-first" else "cloud",
            backoff=Backoff(
                base=o.seconds("backoff_base", 30.0, positive=True),
                cap=cap,
                jitter=o.fraction("jitter", 0.5),
            ),
            login_backoff=Backoff(
                base=min(o.seconds("login_backoff_base", 1.0, positive=True), cap), cap=cap
            ),
            return_after=o.seconds("return_after", 300.0),
            stable_after=o.seconds("stable_after", 5.0),
            min_connect_interval=o.seconds("min_connect_interval", 1.0),
            startup_fallback="no-startup-fallback" not in mistakes,
            refresh_iot="iot-credentials-once" not in mistakes,
            local_client_id="random" if "random-local-client-id" in mistakes else "stable",
            random_id_retry="random-local-client-id" not in mistakes,
        )
        serial = o.string("device", None)
        devices = dyson.get("devices") or []
        if not isinstance(devices, list):
            raise ConfigError(f"{app}: the world descriptor's dyson.devices is not a list")
        entry: Mapping[str, Any] | None = None
        for device in devices:
            if isinstance(device, Mapping) and (serial is None or device.get("serial") == serial):
                entry = device
                break
        if serial is None and entry is not None and isinstance(entry.get("serial"), str):
            serial = entry["serial"]
        local_port = entry.get("local_port") if entry is not None else 0
        local_host = entry.get("local_host") if entry is not None else None
        protocols = tuple(PROTOCOLS)
        config = cls(
            connect_host=descriptor_value(iot, "iot.connect_host", str, app),
            wss_port=descriptor_value(iot, "iot.wss_port", int, app),
            ca_file=descriptor_value(iot, "iot.ca_file", str, app),
            api_url=descriptor_value(dyson, "dyson.api_url", str, app),
            email=descriptor_value(dyson, "dyson.email", str, app),
            password=descriptor_value(dyson, "dyson.password", str, app),
            otp=descriptor_value(dyson, "dyson.otp", str, app),
            serial=serial,
            local_host=local_host if isinstance(local_host, str) and local_host else None,
            local_port=local_port if isinstance(local_port, int) else 0,
            keepalive=o.count("keepalive", 60, minimum=1) or 60,
            connect_timeout=o.seconds("connect_timeout", 5.0, positive=True),
            http_timeout=o.seconds("http_timeout", 5.0, positive=True),
            local_protocol=o.choice("local_protocol", "3.1", protocols),
            cloud_protocol=o.choice("cloud_protocol", "3.1.1", protocols),
            instance_id=o.string("instance_id", DEFAULT_INSTANCE_ID) or DEFAULT_INSTANCE_ID,
            request_state=o.boolean("request_state", True),
            policy=policy,
            mistakes=mistakes,
            seed=o.count("seed", None),
        )
        o.finish()
        return config


@dataclass(frozen=True)
class _Device:
    """The device as the manifest describes it, with its decrypted local credentials."""

    serial: str
    root: str
    local_password: str | None = field(repr=False)
    cloud: bool


class DysonApp:
    """``dyson-app`` / ``dyson-app-as-written``; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        descriptor: Mapping[str, Any],
        options: Mapping[str, Any],
        recorder: Recorder,
    ) -> None:
        self.name = name
        self.recorder = recorder
        self.config = DysonAppConfig.from_inputs(name, descriptor, options)
        recorder.add_secret(self.config.password)
        recorder.add_secret(self.config.otp)
        self.machine = DysonMachine(self.config.policy, rng=random.Random(self.config.seed))
        self.api = DysonCloudClient(
            api_url=self.config.api_url,
            ca_file=self.config.ca_file,
            timeout=self.config.http_timeout,
        )
        self.device: _Device | None = None
        self.iot: IssuedIot | None = None
        self.links: dict[Path, MqttLink] = {}
        self.attempts = 0
        self._tls: ssl.SSLContext | None = None
        self._rt: AppRuntime[Input] | None = None

    @property
    def phase(self) -> Phase:
        return self.machine.phase

    @property
    def current(self) -> Path | None:
        """The path whose link is up (``Local`` / ``Cloud`` of hass-dyson's status sensor)."""
        return self.machine.current

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or cancelled); network failures are events, never
        exceptions (module docstring)."""
        rt = self._rt = AppRuntime[Input](recorder=self.recorder, label=self.name)
        self._tls = await asyncio.to_thread(ssl.create_default_context, cafile=self.config.ca_file)
        try:
            actions = self.machine.handle(Start(), rt.now())
            while True:
                for action in actions:
                    self._perform(action)
                event = await rt.wait_input(stop, self.machine.wake_at, Tick())
                if event is None:
                    break
                actions = self.machine.handle(event, rt.now())
        finally:
            await rt.close()
            for link in self.links.values():
                link.close_now()
            self.links.clear()
            rt.record("client.stopped", phase=self.machine.phase.value, path=self.machine.current)

    # Actions

    def _perform(self, action: Action) -> None:
        rt = self._rt
        assert rt is not None
        if isinstance(action, Login):
            rt.spawn(self._login(action.why))
        elif isinstance(action, FetchIot):
            rt.spawn(self._fetch_iot(action.relogin))
        elif isinstance(action, Connect):
            rt.spawn(self._connect(action))
        elif isinstance(action, Close):
            link = self.links.pop(action.path, None)
            if link is not None:
                rt.spawn(self._close_deliberately(action.path, link))
        elif isinstance(action, Wait):
            rt.record("client.backoff", delay=round(action.delay, 6), why=action.why)
        elif isinstance(action, Switch):
            kind = "client.fallback" if action.kind == "fallback" else "client.return"
            rt.record(kind, **{"from": action.from_, "to": action.to})

    # Login and credentials

    def _login_blocking(self) -> tuple[str, list[Mapping[str, Any]]]:
        """Log in and read the manifest (worker thread: no recorder calls here)."""
        cfg = self.config
        token = self.api.login(email=cfg.email, password=cfg.password, otp=cfg.otp)
        return token, self.api.manifest()

    def _pick(self, manifest: list[Mapping[str, Any]]) -> _Device | None:
        serial = self.config.serial
        for entry in manifest:
            if serial is None or entry.get("serialNumber") == serial:
                return self._device(entry)
        return None

    def _device(self, entry: Mapping[str, Any]) -> _Device:
        rt = self._rt
        assert rt is not None
        serial = str(entry.get("serialNumber"))
        connected = entry.get("connectedConfiguration")
        mqtt = connected.get("mqtt") if isinstance(connected, Mapping) else None
        mqtt = mqtt if isinstance(mqtt, Mapping) else {}
        root = mqtt.get("mqttRootTopicLevel") or entry.get("type") or ""
        encrypted = mqtt.get("localBrokerCredentials")
        password: str | None = None
        if isinstance(encrypted, str) and encrypted:
            rt.secret(encrypted)
            try:
                password = decrypt_local_credentials(encrypted).ap_password_hash
                rt.secret(password)
            except LocalCredentialsError as exc:
                rt.record(
                    "client.error", stage="local-credentials", reason=exc.reason, error=exc.message
                )
        return _Device(
            serial=serial,
            root=str(root),
            local_password=password,
            cloud=mqtt.get("remoteBrokerType") == "wss",
        )

    async def _login(self, why: str) -> None:
        rt = self._rt
        assert rt is not None
        try:
            token, manifest = await asyncio.to_thread(self._login_blocking)
            rt.secret(token)
            device, count = self._pick(manifest), len(manifest)
        except DysonApiError as exc:
            rt.record("client.login", ok=False, why=why, reason=exc.reason, error=str(exc))
            rt.record("client.error", stage="login", reason=exc.reason, error=str(exc))
            rt.post(LoginFailed(exc.reason))
            return
        except Exception as exc:  # a bug of this app: on the timeline, then a retry
            rt.record("client.bug", stage="login", error=f"{type(exc).__name__}: {exc}")
            rt.post(LoginFailed("bug"))
            return
        cfg = self.config
        if device is None:
            rt.record(
                "client.login",
                ok=True,
                why=why,
                devices=count,
                serial=cfg.serial,
                local=False,
                cloud=False,
            )
            rt.record(
                "client.error",
                stage="manifest",
                reason="no-device",
                error=f"the manifest lists {count} device(s), not {cfg.serial or 'any'}",
            )
            rt.post(LoginOk(local=False, cloud=False))
            return
        self.device = device
        local = (
            device.local_password is not None and cfg.local_host is not None and cfg.local_port > 0
        )
        rt.record(
            "client.login",
            ok=True,
            why=why,
            devices=count,
            serial=device.serial,
            root=device.root,
            local=local,
            cloud=device.cloud,
        )
        rt.post(LoginOk(local=local, cloud=device.cloud))

    def _iot_blocking(self, relogin: bool, serial: str) -> tuple[str | None, IssuedIot]:
        """(A new Bearer token after a 401, then) IoT credentials (worker thread)."""
        cfg = self.config
        token = None
        if relogin:
            token = self.api.login(email=cfg.email, password=cfg.password, otp=cfg.otp)
        return token, self.api.iot_credentials(serial)

    async def _fetch_iot(self, relogin: bool) -> None:
        rt = self._rt
        assert rt is not None
        assert self.device is not None
        try:
            token, issued = await asyncio.to_thread(self._iot_blocking, relogin, self.device.serial)
            rt.secret(token)
        except DysonApiError as exc:
            rt.record(
                "client.credentials",
                source="dyson-cloud",
                ok=False,
                relogin=relogin,
                reason=exc.reason,
                cached=exc.reason == "throttled" and self.iot is not None,
            )
            rt.record("client.error", stage="iot-credentials", reason=exc.reason, error=str(exc))
            rt.post(IotFailed(exc.reason))
            return
        except Exception as exc:  # a bug of this app: on the timeline, then a retry
            rt.record("client.bug", stage="iot-credentials", error=f"{type(exc).__name__}: {exc}")
            rt.post(IotFailed("bug"))
            return
        rt.secret(issued.credentials.token_signature)
        self.iot = issued
        rt.record(
            "client.credentials",
            source="dyson-cloud",
            ok=True,
            relogin=relogin,
            client_id=issued.credentials.client_id,
            endpoint=issued.endpoint,
        )
        rt.post(IotReady())

    # Links

    def _spec(self, action: Connect) -> tuple[LinkSpec, str]:
        cfg = self.config
        device = self.device
        assert device is not None
        if action.path == "local":
            if action.client_id == "stable":
                client_id = local_client_id(cfg.instance_id, device.serial)
            else:
                client_id = uuid.uuid4().hex[:23]
            assert cfg.local_host is not None
            spec = LinkSpec(
                client_id=client_id,
                host=cfg.local_host,
                port=cfg.local_port,
                transport="tcp",
                protocol=cfg.local_protocol,
                username=device.serial,
                password=device.local_password,
                keepalive=cfg.keepalive,
                connect_timeout=cfg.connect_timeout,
            )
            return spec, cfg.local_host
        assert self.iot is not None
        creds, endpoint = self.iot.credentials, self.iot.endpoint
        if "design-client-id" in cfg.mistakes:
            client_id = f"dyson-ha-cloud-{device.serial}-{uuid.uuid4().hex[:8]}"
        else:
            client_id = creds.client_id
        if "token-in-path" in cfg.mistakes:
            query = urllib.parse.urlencode(
                {"token": creds.token_value, "signature": creds.token_signature}
            )
            path, headers = f"/mqtt?{query}", None
        else:
            path = "/mqtt"
            headers = {
                "Host": endpoint,
                creds.token_key: creds.token_value,
                "X-Amz-CustomAuthorizer-Name": creds.custom_authorizer_name,
                "X-Amz-CustomAuthorizer-Signature": creds.token_signature,
            }
        spec = LinkSpec(
            client_id=client_id,
            host=endpoint,
            port=WSS_PORT,
            dial=(cfg.connect_host, cfg.wss_port),
            transport="websockets",
            ws_path=path,
            ws_headers=headers,
            tls=self._tls,
            protocol=cfg.cloud_protocol,
            keepalive=cfg.keepalive,
            connect_timeout=cfg.connect_timeout,
            callback_api_version="no-callback-api-version" not in cfg.mistakes,
        )
        return spec, endpoint

    async def _connect(self, action: Connect) -> None:
        rt = self._rt
        assert rt is not None
        path = action.path
        self.attempts += 1
        attempt = self.attempts
        spec, url_host = self._spec(action)
        link = MqttLink(spec)
        try:
            outcome = await link.open()
        except Exception as exc:  # a bug below paho's documented errors: say so, go on
            link.close_now()
            rt.record("client.bug", stage="connect", error=f"{type(exc).__name__}: {exc}")
            outcome = LinkOutcome(False, "bug", f"{type(exc).__name__}: {exc}")
        except BaseException:
            link.close_now()
            raise
        for problem in link.problems:  # paho's warnings, callbacks that broke meanwhile
            rt.record("client.problem", path=path, what=problem.what, detail=problem.detail)
        rt.record(
            "client.connect",
            path=path,
            attempt=attempt,
            url_host=url_host,
            client_id=spec.client_id,
            id_kind=action.client_id,
            ok=outcome.ok,
            reason=outcome.reason,
            error=outcome.error,
        )
        if not outcome.ok:
            await link.close()
            rt.record(
                "client.error", stage=f"connect-{path}", reason=outcome.reason, error=outcome.error
            )
            rt.post(LinkFailed(path, outcome.reason))
            return
        self.links[path] = link
        rt.record("client.connected", path=path, attempt=attempt, client_id=spec.client_id)
        rt.post(LinkUp(path))
        device = self.device
        assert device is not None
        prefix = f"{device.root}/{device.serial}/"
        link.subscribe(
            [
                (f"{prefix}status/current", 0),
                (f"{prefix}status/faults", 0),
                (f"{prefix}status/connection", 0),
            ]
        )
        await self._pump(path, link, command=f"{prefix}command")

    async def _pump(self, path: Path, link: MqttLink, *, command: str) -> None:
        rt = self._rt
        assert rt is not None
        while True:
            event = await link.next_event()
            if isinstance(event, LinkMessage):
                rt.record(
                    "client.message", path=path, topic=event.topic, msg=_message_type(event.payload)
                )
            elif isinstance(event, LinkSubscribed):
                rt.record("client.subscribed", path=path, granted=list(event.granted))
                if self.config.request_state:
                    link.publish(command, _request_current_state())
            elif isinstance(event, LinkProblem):
                rt.record("client.problem", path=path, what=event.what, detail=event.detail)
            elif isinstance(event, LinkClosed):
                deliberate = self.links.get(path) is not link
                rt.record("client.disconnected", path=path, rc=event.rc, deliberate=deliberate)
                if not deliberate:
                    del self.links[path]
                    await link.close()
                    rt.post(LinkDown(path, event.rc))
                return

    async def _close_deliberately(self, path: Path, link: MqttLink) -> None:
        await link.close()


def _message_type(payload: bytes) -> str | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    msg = value.get("msg") if isinstance(value, dict) else None
    return msg if isinstance(msg, str) else None


def _request_current_state() -> bytes:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return json.dumps({"msg": "REQUEST-CURRENT-STATE", "time": now}).encode()
