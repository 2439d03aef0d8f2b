"""The Dyson half of a harness world: the fake Dyson cloud and simulated devices in it.

:class:`harness.world.World` starts this when its config has ``dyson=DysonConfig(...)``
(or on :meth:`harness.world.World.enable_dyson`); ``iot-harness serve --devices 438,527``
is the same from the command line. It wires the parts of :mod:`simulators.dyson` to the
world's gateway, PKI, recorder and clock:

* the **fake Dyson cloud** (:class:`~simulators.dyson.cloud_api.FakeDysonCloud`) over HTTPS
  on ``api_host`` (the gateway's address unless set) and ``api_port``, with a certificate
  for that address, ``localhost``, ``appapi.cp.dyson.com`` and ``appapi.cp.dyson.cn``
  (dyson.md §6 "Hosts"), one account whose login is in the descriptor, and routes for both
  API names (port 443) so the resolver override sends unmodified clients such as
  libdyson-rest to it;
* its **custom authorizer** (``cld-iot-credentials-lambda-authorizer``, token key
  ``token``, signing on; aws-iot.md §2.5) registered in the gateway, so the IoT
  credentials the cloud issues open a WebSocket to the gateway as the apps do (§7). The
  Lambda grants :func:`app_policy`: the app may connect as its ``ClientId``, publish
  commands to its device, and subscribe to and receive anything under
  ``<root>/<serial>/`` (hass-dyson subscribes ``<root>/<sn>/#`` over the cloud, dyson.md
  §7; whether Dyson's policy allows it is **(unknown)**, here it does), but not ``#``;
* each **device** (:class:`SimulatedDevice`): a :class:`~simulators.dyson.device.DysonDevice`
  of a product profile owned by a :class:`~simulators.dyson.host.DeviceHost`, listed in the
  account's manifest with its encrypted local password, with its own local broker
  (``local``), a cloud link to the gateway as a registered thing (``cloud``), or both
  (``both``, the default: one device, two sinks, dyson.md §7 "the same topics as
  locally"). The local broker listens on the device's ``local_host`` (the gateway's
  address unless set) and ``local_port``; a route ``<serial>.local`` → the local broker
  (port 1883) lets in-process clients that hard-code 1883 reach it by name (hass-dyson's
  ``{serial}.local``, §1.1).

Own addresses for the API and each broker are what let the sandbox (:mod:`harness.sandbox`)
serve every real name on its well-known port with nothing in between.

:meth:`DysonWorld.descriptor` is the ``dyson`` section of the world descriptor (DESIGN.md,
contract 1).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from harness.auth.policy import CONNECT, PUBLISH, RECEIVE, SUBSCRIBE, VERSION_2012
from harness.errors import ConfigError
from simulators.dyson.cloud_api import (
    DYSON_API_HOSTS,
    CloudDevice,
    DysonAccount,
    DysonCloudSettings,
    FakeDysonCloud,
)
from simulators.dyson.cloud_link import Backoff, DysonCloudLink
from simulators.dyson.credentials import IssuedIotToken, new_ap_password_hash
from simulators.dyson.device import DysonDevice
from simulators.dyson.host import DeviceHost
from simulators.dyson.local_auth import validate_serial
from simulators.dyson.local_broker import DysonLocalBroker
from simulators.dyson.profiles import ProductProfile, get_profile
from simulators.dyson.quirks import LocalQuirks
from simulators.dyson.topics import DeviceTopics

if TYPE_CHECKING:
    from harness.world import World

__all__ = [
    "MODES",
    "DysonConfig",
    "DysonDeviceSpec",
    "DysonWorld",
    "Mode",
    "SimulatedDevice",
    "app_policy",
    "parse_device_list",
]

#: How a device is reachable: its own broker, the cloud, or both (issue [dyson], "fleet").
Mode = Literal["local", "cloud", "both"]
MODES: tuple[Mode, ...] = ("local", "cloud", "both")
#: The port clients hard-code for the local broker (dyson.md §1.1).
LOCAL_MQTT_PORT = 1883
HTTPS_PORT = 443


@dataclass(frozen=True, kw_only=True)
class DysonDeviceSpec:
    """One simulated device: its profile, identity, reachability and broker quirks."""

    #: A profile name (``438``, ``438M``, ``527``, ``475``, ``358``; dyson.md §3).
    product_type: str = "438"
    #: A Dyson serial (dyson.md §1.2); ``None`` makes one up (``SIM-EU-438X0001``).
    serial: str | None = None
    mode: Mode = "both"
    # Local broker (dyson.md §1)
    quirks: LocalQuirks = field(default_factory=LocalQuirks)
    #: ``apPasswordHash``; ``None`` makes a random one of the real shape.
    local_password: str | None = field(default=None, repr=False)
    #: Where the local broker listens: ``None`` is the gateway's host; port 0 is any.
    local_host: str | None = None
    local_port: int = 0
    # Device behaviour (DysonDevice's options)
    #: How long the device has been on when the world starts: an hour by default, so the
    #: sensors have settled; 0 shows the warm-up (VOC/NO2 read INIT, dyson.md §5).
    uptime_s: float = 3600.0
    warmup_s: float | None = None
    #: Unprompted sensor data every so many seconds; ``None`` (default): only when asked.
    env_push_interval_s: float | None = None
    # Cloud link
    report_link_faults: bool = False

    def __post_init__(self) -> None:
        get_profile(self.product_type)  # ConfigError naming the known profiles
        if self.serial is not None:
            validate_serial(self.serial)
        if self.mode not in MODES:
            raise ConfigError(f"device mode {self.mode!r}: one of {', '.join(MODES)}")
        if not 0 <= self.local_port <= 65535:
            raise ConfigError(f"local_port must be 0-65535, got {self.local_port}")
        if self.local_host == "":
            raise ConfigError("local_host must be an address (or None: the gateway's host)")


@dataclass(frozen=True, kw_only=True)
class DysonConfig:
    """The Dyson side of a world: the account, the cloud's switches and the devices."""

    devices: tuple[DysonDeviceSpec, ...] = ()
    # The MyDyson account (dyson.md §6 "Email OTP login"); in the descriptor by contract
    email: str = "owner@example.com"
    password: str = field(default="harness-password", repr=False)
    otp: str = field(default="123456", repr=False)
    # The fake cloud: its settings, address (None = the gateway's host) and port (0 = any)
    settings: DysonCloudSettings = field(default_factory=DysonCloudSettings)
    api_host: str | None = None
    api_port: int = 0
    # The devices' cloud links
    keep_alive: int = 60
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        if not 0 <= self.api_port <= 65535:
            raise ConfigError(f"api_port must be 0-65535, got {self.api_port}")
        if self.api_host == "":
            raise ConfigError("api_host must be an address (or None: the gateway's host)")
        serials = [d.serial for d in self.devices if d.serial is not None]
        if len(set(serials)) != len(serials):
            raise ConfigError(f"duplicate device serials: {serials}")


def parse_device_list(text: str) -> tuple[DysonDeviceSpec, ...]:
    """``438@1883,527:cloud,438M:local`` → device specs: profile names, each with an
    optional ``:local``, ``:cloud`` or ``:both`` (the default) and an optional ``@PORT`` for
    its local broker (``@1883`` lets clients that hard-code 1883 connect, dyson.md §1.1).
    :class:`ConfigError` when wrong."""
    specs: list[DysonDeviceSpec] = []
    for item in text.split(","):
        entry, at, port_text = item.strip().partition("@")
        name, _, mode = entry.partition(":")
        if not name:
            raise ConfigError(f"{text!r}: an empty device entry (expected e.g. 438,527)")
        mode = mode or "both"
        if mode not in MODES:
            raise ConfigError(f"{item.strip()!r}: the mode after ':' is one of {', '.join(MODES)}")
        port = 0
        if at:
            if (
                not (port_text.isascii() and port_text.isdigit())
                or not 0 <= int(port_text) <= 65535
            ):
                raise ConfigError(f"{item.strip()!r}: the local port after '@' is 0-65535")
            port = int(port_text)
        specs.append(DysonDeviceSpec(product_type=name, mode=mode, local_port=port))
    return tuple(specs)


def app_policy(*, region: str, account_id: str, client_id: str, topics: DeviceTopics) -> str:
    """What the Dyson cloud's IoT credentials allow an app (aws-iot.md §5; dyson.md §7).

    Connect as the issued ``ClientId``, publish to ``<root>/<serial>/command``, subscribe
    to and receive any topic under ``<root>/<serial>/`` (so ``<root>/<serial>/#`` too, and
    the app sees commands echoed, §7). The bare ``#`` is not allowed: AWS closes the
    connection (aws-iot.md §4.5). Dyson's real policy is **(unknown)** (dyson.md §8).
    """
    prefix = f"arn:aws:iot:{region}:{account_id}"
    document = {
        "Version": VERSION_2012,
        "Statement": [
            {"Effect": "Allow", "Action": CONNECT, "Resource": f"{prefix}:client/{client_id}"},
            {"Effect": "Allow", "Action": PUBLISH, "Resource": f"{prefix}:topic/{topics.command}"},
            {
                "Effect": "Allow",
                "Action": SUBSCRIBE,
                "Resource": f"{prefix}:topicfilter/{topics.prefix}*",
            },
            {"Effect": "Allow", "Action": RECEIVE, "Resource": f"{prefix}:topic/{topics.prefix}*"},
        ],
    }
    return json.dumps(document)


class SimulatedDevice:
    """One running device: the device logic, its host, and its local broker and cloud link."""

    def __init__(
        self,
        *,
        spec: DysonDeviceSpec,
        serial: str,
        local_password: str,
        world: World,
        dyson: DysonConfig,
    ) -> None:
        self.spec = spec
        self.serial = serial
        self.local_password = local_password
        self.profile: ProductProfile = get_profile(spec.product_type)
        self.device = DysonDevice(
            self.profile,
            serial=serial,
            now=world.clock.now(),
            uptime_s=spec.uptime_s,
            warmup_s=spec.warmup_s,
            env_push_interval_s=spec.env_push_interval_s,
        )
        self.host = DeviceHost(self.device, recorder=world.recorder, clock=world.clock)
        #: Where the local broker listens (and the descriptor's ``local_host``).
        self.local_host = spec.local_host or world.config.gateway.host
        self.cloud: DysonCloudLink | None = None
        self.local: DysonLocalBroker | None = None
        self._world = world
        self._dyson = dyson
        self._stack = contextlib.AsyncExitStack()

    # Identity

    @property
    def topics(self) -> DeviceTopics:
        return self.device.topics

    @property
    def root_topic(self) -> str:
        return self.profile.root_topic

    @property
    def mode(self) -> Mode:
        return self.spec.mode

    @property
    def local_port(self) -> int:
        """The local broker's bound port; 0 when the device has none (cloud only)."""
        if self.local is None:
            return 0
        return self.local.port

    @property
    def local_hostname(self) -> str:
        """``<serial>.local``: the mDNS-style name the resolver maps to the local broker."""
        return f"{self.serial}.local".lower()

    def cloud_device(self) -> CloudDevice:
        """The device as the account's manifest lists it (dyson.md §6)."""
        p = self.profile
        return CloudDevice(
            serial=self.serial,
            product_type=p.product_type,
            variant=p.variant,
            model=p.model,
            product_name=p.product_name,
            root_topic=p.root_topic,
            local_password=self.local_password,
            category=p.category,
            connection_category=p.connection_category,
            firmware_version=p.firmware_version,
            capabilities=p.capabilities,
        )

    # Lifecycle

    async def start(self) -> None:
        world, spec = self._world, self.spec
        try:
            await self._stack.enter_async_context(self.host)
            if spec.mode in ("local", "both"):
                await self._start_local()
            if spec.mode in ("cloud", "both"):
                self.cloud = DysonCloudLink.for_gateway(
                    self.host,
                    world.gateway,
                    keep_alive=self._dyson.keep_alive,
                    backoff=self._dyson.backoff,
                    report_link_faults=spec.report_link_faults,
                    clock=world.clock,
                )
                await self._stack.enter_async_context(self.cloud)
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start_local(self) -> None:
        world = self._world
        self.local = DysonLocalBroker(
            self.host,
            password=self.local_password,
            quirks=self.spec.quirks,
            host=self.local_host,
            port=self.spec.local_port,
            recorder=world.recorder,
            clock=world.clock,
        )
        await self._stack.enter_async_context(self.local)
        world.add_route(
            self.local_hostname, ports={LOCAL_MQTT_PORT: self.local_port}, address=self.local_host
        )
        self._stack.callback(world.remove_route, self.local_hostname)

    async def stop(self) -> None:
        await self._stack.aclose()

    def descriptor(self) -> dict[str, Any]:
        """This device's entry in ``dyson.devices`` (DESIGN.md contract 1, plus extras)."""
        return {
            "serial": self.serial,
            "product_type": self.profile.product_type,
            "root_topic": self.root_topic,
            "local_host": self.local_host,
            "local_port": self.local_port,
            "local_password": self.local_password,
            # Beyond the contract
            "profile": self.profile.name,
            "model": self.profile.model,
            "mode": self.mode,
            "local_hostname": self.local_hostname,
            "thing_name": self.cloud.client_id if self.cloud is not None else None,
        }


class DysonWorld:
    """The running Dyson side of a :class:`~harness.world.World`; see the module docstring."""

    def __init__(self, world: World, config: DysonConfig | None = None) -> None:
        self.world = world
        self.config = config or DysonConfig()
        self.devices: dict[str, SimulatedDevice] = {}
        self._serials = itertools.count(1)
        self._stack = contextlib.AsyncExitStack()
        self.cloud: FakeDysonCloud

    async def __aenter__(self) -> DysonWorld:
        world, cfg = self.world, self.config
        host = cfg.api_host or world.config.gateway.host
        account = DysonAccount(email=cfg.email, password=cfg.password, otp=cfg.otp)
        self.cloud = FakeDysonCloud(
            signer=world.pki.token_signing_key("dyson-cloud"),
            endpoint=world.endpoint,
            accounts=[account],
            settings=cfg.settings,
            recorder=world.recorder,
            clock=world.clock,
            ssl=world.pki.server_context(host, "localhost", *DYSON_API_HOSTS),
            host=host,
            port=cfg.api_port,
        )
        try:
            await self._stack.enter_async_context(self.cloud)
            world.gateway.add_authorizer(self.cloud.authorizer(policy_documents=self._policies))
            for name in DYSON_API_HOSTS:
                world.add_route(name, ports={HTTPS_PORT: self.cloud.port}, address=host)
            for spec in cfg.devices:
                await self.add_device(spec)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    def _policies(self, issued: IssuedIotToken) -> Sequence[str]:
        gw = self.world.config.gateway
        root = self.cloud.device(issued.serial).root
        return (
            app_policy(
                region=gw.region,
                account_id=gw.account_id,
                client_id=issued.client_id,
                topics=DeviceTopics(root, issued.serial),
            ),
        )

    # Devices

    def _new_serial(self, profile: ProductProfile) -> str:
        while True:
            serial = f"SIM-EU-{profile.root_topic:X<4}{next(self._serials):04d}"
            if serial not in self.devices:
                return serial

    async def add_device(self, spec: DysonDeviceSpec | None = None) -> SimulatedDevice:
        """Start one more device, list it in the account's manifest, and return it."""
        spec = spec or DysonDeviceSpec()
        profile = get_profile(spec.product_type)
        serial = spec.serial or self._new_serial(profile)
        if serial in self.devices:
            raise ConfigError(f"a device {serial} is already running")
        running = SimulatedDevice(
            spec=spec,
            serial=serial,
            local_password=spec.local_password or new_ap_password_hash(),
            world=self.world,
            dyson=self.config,
        )
        self.world.recorder.add_secret(running.local_password)
        self.cloud.add_device(running.cloud_device())
        try:
            await running.start()
        except BaseException:
            self.cloud.remove_device(serial)
            raise
        self.devices[serial] = running
        self._stack.push_async_callback(self._forget, serial)
        return running

    async def remove_device(self, serial: str) -> None:
        """Stop a device (its cloud link says GOODBYE) and take it off the manifest."""
        await self._forget(serial)

    async def _forget(self, serial: str) -> None:
        running = self.devices.pop(serial, None)
        if running is None:
            return
        try:
            await running.stop()
        finally:
            with contextlib.suppress(ConfigError):
                self.cloud.remove_device(serial)

    def device(self, serial: str) -> SimulatedDevice:
        try:
            return self.devices[serial]
        except KeyError:
            raise ConfigError(f"no simulated Dyson device {serial!r}") from None

    def __iter__(self) -> Iterator[SimulatedDevice]:
        return iter(list(self.devices.values()))

    # The contract

    def descriptor(self) -> dict[str, Any]:
        """The descriptor's ``dyson`` section (DESIGN.md contract 1), plus extras:
        ``api_hosts``, the authorizer's ``authorizer_name`` and ``token_key``."""
        out = self.cloud.descriptor()
        out["devices"] = [running.descriptor() for running in self.devices.values()]
        out["api_hosts"] = list(DYSON_API_HOSTS)
        out["authorizer_name"] = self.cloud.authorizer_name
        out["token_key"] = self.cloud.token_key
        return out
