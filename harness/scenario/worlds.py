"""A scenario's world: a running :class:`~harness.world.World` built from a :class:`WorldSpec`.

:func:`open_world` starts the world a scenario file describes (issue [scenarios],
"Scenario files"): the gateway settings with AWS's limits compressed into seconds, the
certificate each listener serves (aws-iot.md §3), the identity pools (§6), the custom
authorizers and their Lambda's answer (§2.2, §2.3), the things and their client
certificates (§3, §5), the world clock's starting offset (§1.7), and the Dyson side
(dyson.md §1, §6) when the file has one. The pytest plugin's ``iot_world`` fixture and the
scenario runner both use it.

What the world is called by the file (pool ``player``, authorizer ``lamp``, thing
``fan``) and what it is in the world (pool id, key files) meet in
:meth:`ScenarioWorld.descriptor`: the world descriptor of DESIGN.md contract 1, made for
one client, with these keys beyond the contract (contract keys keep their meaning):

* ``cognito.identity_pool_id``: the pool the client's ``identity_pool`` option names (else
  the file's first pool, else the newcomer pool); ``cognito.identity_pools``: every pool of
  the file, name → id;
* ``authorizers``: the file's authorizers (``name``, ``token_key``, ``signing``,
  ``private_key_file`` when signing, ``default``), the one the client's ``authorizer``
  option names first, then the newcomer authorizer;
* ``things``: ``[{name, cert_file, key_file}]``, the client's ``thing`` first.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.auth import custom
from harness.cognito import IdentityPool
from harness.errors import ConfigError
from harness.faults import serve_certificate
from harness.pki import BadCert, IssuedCert, WorldPKI
from harness.scenario.model import AuthorizerSpec, ClientSpec, DysonSpec, WorldSpec
from harness.world import World, WorldConfig

if TYPE_CHECKING:
    from simulators.dyson.world import DysonConfig

__all__ = [
    "AuthorizerInfo",
    "ScenarioWorld",
    "ThingInfo",
    "manifest_changes",
    "open_world",
    "world_config",
]


@dataclass(frozen=True)
class AuthorizerInfo:
    """A file's authorizer as clients learn it from the descriptor."""

    name: str
    token_key: str | None
    signing: bool
    default: bool
    private_key_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "token_key": self.token_key,
            "signing": self.signing,
            "default": self.default,
        }
        if self.private_key_file is not None:
            out["private_key_file"] = str(self.private_key_file)
        return out


@dataclass(frozen=True)
class ThingInfo:
    """A file's thing and where its client certificate and key are."""

    name: str
    cert: IssuedCert = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cert_file": str(self.cert.cert_file),
            "key_file": str(self.cert.key_file),
        }


@dataclass
class ScenarioWorld:
    """A running world and the names the scenario file gave its parts."""

    world: World
    spec: WorldSpec
    pools: dict[str, str] = field(default_factory=dict)
    authorizers: dict[str, AuthorizerInfo] = field(default_factory=dict)
    things: dict[str, ThingInfo] = field(default_factory=dict)

    def descriptor(
        self, base: Mapping[str, Any] | None = None, *, client: ClientSpec | None = None
    ) -> dict[str, Any]:
        """The descriptor for ``client`` (module docstring); ``base`` is the world's own
        (:meth:`World.descriptor`, or a fault plan's with proxied ports)."""
        out = copy.deepcopy(dict(base) if base is not None else self.world.descriptor())
        options: Mapping[str, Any] = client.options if client is not None else {}
        cognito = out.setdefault("cognito", {})
        cognito["identity_pools"] = dict(self.pools)
        chosen_pool = options.get("identity_pool")
        if isinstance(chosen_pool, str) and chosen_pool in self.pools:
            cognito["identity_pool_id"] = self.pools[chosen_pool]
        elif self.pools:
            cognito["identity_pool_id"] = next(iter(self.pools.values()))
        mine = [a.to_json() for a in self.authorizers.values()]
        chosen = options.get("authorizer")
        mine.sort(key=lambda a: a["name"] != chosen)
        out["authorizers"] = mine + list(out.get("authorizers", []))
        things = [t.to_json() for t in self.things.values()]
        thing = options.get("thing")
        things.sort(key=lambda t: t["name"] != thing)
        out["things"] = things
        return out


def world_config(
    spec: WorldSpec,
    *,
    events_file: Path | None = None,
    state_dir: Path | None = None,
    pki: WorldPKI | None = None,
) -> WorldConfig:
    """The :class:`WorldConfig` of a scenario's world (:func:`open_world` adds its parts);
    ``pki`` is a CA to use instead of minting one (the pytest plugin's session CA)."""
    return WorldConfig(
        gateway=spec.gateway.gateway_config(),
        state_dir=state_dir,
        events_file=events_file,
        cognito=spec.cognito.enabled,
        newcomer_defaults=spec.newcomer_defaults,
        dyson=_dyson_config(spec.dyson) if spec.dyson is not None else None,
        pki=pki,
    )


@contextlib.asynccontextmanager
async def open_world(
    spec: WorldSpec,
    *,
    events_file: Path | None = None,
    state_dir: Path | None = None,
    pki: WorldPKI | None = None,
) -> AsyncIterator[ScenarioWorld]:
    """Start the world ``spec`` describes; it stops when the ``async with`` block ends.

    Raises :class:`~harness.errors.ConfigError` for what the world cannot be (identity
    pools without Cognito, say).
    """
    if spec.identity_pools and not spec.cognito.enabled:
        raise ConfigError("identity_pools need Cognito; remove `cognito: {enabled: false}`")
    config = world_config(spec, events_file=events_file, state_dir=state_dir, pki=pki)
    async with World(config) as world:
        built = ScenarioWorld(world=world, spec=spec)
        _populate(built)
        yield built


def _populate(built: ScenarioWorld) -> None:
    world, spec = built.world, built.spec
    if spec.clock_offset:
        world.clock.shift(spec.clock_offset)
    if spec.gateway.certificate != "good":
        serve_certificate(world, "gateway", spec.gateway.certificate)
    if spec.cognito.enabled and spec.cognito.certificate != "good":
        serve_certificate(world, "cognito", spec.cognito.certificate)
    if spec.dyson is not None and spec.dyson.cloud.certificate != "good":
        serve_certificate(world, "dyson-api", spec.dyson.cloud.certificate)
    for pool in spec.identity_pools:
        assert world.cognito is not None
        pool_id = pool.pool_id or f"{world.region}:{uuid.uuid4()}"
        world.cognito.add_pool(
            IdentityPool(
                pool_id=pool_id,
                allow_unauthenticated=pool.allow_unauthenticated,
                credential_lifetime=pool.credential_lifetime,
                policies=pool.policies,
                rate_limit=pool.rate_limit,
                login_providers=frozenset(pool.login_providers),
            )
        )
        built.pools[pool.name] = pool_id
    for authorizer in spec.authorizers:
        built.authorizers[authorizer.name] = _add_authorizer(world, authorizer)
    for thing in spec.things:
        if thing.certificate == "good":
            cert = world.pki.client_cert(thing.name)
        else:
            cert = world.pki.bad_cert(BadCert(thing.certificate), common_name=thing.name)
        world.gateway.register_thing(thing.name, cert.cert_pem, policies=thing.policies)
        built.things[thing.name] = ThingInfo(thing.name, cert)
    if spec.dyson is not None and world.dyson is not None:
        for device in spec.dyson.devices:
            if device.manifest:
                changes = manifest_changes(device.serial, device.manifest)
                world.dyson.cloud.update_device(device.serial, **changes)


#: Manifest v3 members a file may set, and the fake cloud's field for each
#: (:class:`simulators.dyson.cloud_api.CloudDevice`).
_MANIFEST_TOP = {
    "name": "name",
    "variant": "variant",
    "model": "model",
    "productName": "product_name",
    "category": "category",
    "connectionCategory": "connection_category",
}
_MANIFEST_MQTT = {
    "remoteBrokerType": "remote_broker_type",
    "mqttRootTopicLevel": "root_topic",
    "localBrokerCredentials": "local_password",
}


def manifest_changes(serial: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A device's ``manifest`` (merged into its manifest v3 entry, dyson.md §6) as changes
    of the fake cloud's record, so the manifest can say what the device does not.

    Supported: ``name``, ``variant``, ``model``, ``productName``, ``category``,
    ``connectionCategory`` (``null`` leaves it out: field-bugs.md FB-04),
    ``connectedConfiguration: null``, and under ``connectedConfiguration.mqtt``:
    ``remoteBrokerType`` (any string, ``mqtts``: FB-09), ``mqttRootTopicLevel``, and
    ``localBrokerCredentials``: ``null`` (no local credentials, FB-04) or the JSON it
    decrypts to, ``{apPasswordHash: ...}``, which the cloud encrypts (dyson.md §1.2); a
    hash the device does not have makes a manifest whose local password is wrong. Anything
    else is a :class:`ConfigError` naming the member.
    """
    changes: dict[str, Any] = {}
    for key, value in manifest.items():
        if key in _MANIFEST_TOP:
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"device {serial}: manifest {key} must be a string or null")
            changes[_MANIFEST_TOP[key]] = value
        elif key == "connectedConfiguration":
            changes.update(_connected_changes(serial, value))
        else:
            raise ConfigError(
                f"device {serial}: manifest member {key!r} not supported by the runner"
            )
    return changes


def _connected_changes(serial: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {"connected": False}
    where = f"device {serial}: manifest connectedConfiguration"
    if not isinstance(value, Mapping) or set(value) - {"mqtt"}:
        raise ConfigError(f"{where} is null or {{mqtt: {{...}}}} (only mqtt is supported)")
    mqtt = value.get("mqtt")
    mqtt = {} if mqtt is None else mqtt
    if not isinstance(mqtt, Mapping):
        raise ConfigError(f"{where}.mqtt must be a mapping")
    changes: dict[str, Any] = {}
    for key, item in mqtt.items():
        if key not in _MANIFEST_MQTT:
            raise ConfigError(f"{where}.mqtt member {key!r} not supported by the runner")
        if key == "localBrokerCredentials" and item is not None:
            password = item.get("apPasswordHash") if isinstance(item, Mapping) else None
            if not isinstance(password, str) or not password or set(item) != {"apPasswordHash"}:
                raise ConfigError(
                    f"{where}.mqtt.localBrokerCredentials is null or {{apPasswordHash: <text>}}"
                )
            item = password
        elif key != "localBrokerCredentials" and not isinstance(item, str):
            raise ConfigError(f"{where}.mqtt.{key} must be a string")
        changes[_MANIFEST_MQTT[key]] = item
    return changes


def _lambda(spec: AuthorizerSpec) -> custom.AuthorizerHandler:
    """The authorizer Lambda's answer a file chose (aws-iot.md §2.3)."""
    decision = spec.decision
    if decision == "deny":
        return lambda _event: {"isAuthenticated": False}
    if decision == "error":

        def fail(_event: custom.AuthorizerEvent) -> Mapping[str, Any]:
            raise RuntimeError("the authorizer Lambda failed (scenario decision: error)")

        return fail
    if decision == "bad-response":
        return lambda _event: {"isAuthenticated": "yes", "principalId": 42}
    answer: dict[str, Any] = {
        "isAuthenticated": True,
        "principalId": spec.principal,
        "policyDocuments": list(spec.policies),
    }
    if spec.disconnect_after is not None:
        answer["disconnectAfterInSeconds"] = spec.disconnect_after
    if spec.refresh_after is not None:
        answer["refreshAfterInSeconds"] = spec.refresh_after
    return lambda _event: dict(answer)


def _add_authorizer(world: World, spec: AuthorizerSpec) -> AuthorizerInfo:
    key = world.pki.token_signing_key(spec.name) if spec.signing else None
    world.gateway.add_authorizer(
        custom.Authorizer(
            name=spec.name,
            handler=_lambda(spec),
            token_key=spec.token_key,
            signing_enabled=spec.signing,
            public_keys=(key.public_key_pem,) if key is not None else (),
            status=spec.status,
        ),
        default=spec.default,
    )
    return AuthorizerInfo(
        name=spec.name,
        token_key=spec.token_key,
        signing=spec.signing,
        default=spec.default,
        private_key_file=key.private_key_file if key is not None else None,
    )


def _dyson_config(spec: DysonSpec) -> DysonConfig:
    """The Dyson side's config (simulators.dyson.world) for a file's ``dyson`` section."""
    from simulators.dyson.cloud_api import DysonCloudSettings
    from simulators.dyson.quirks import LocalQuirks, SynFragile
    from simulators.dyson.world import DysonConfig, DysonDeviceSpec, Mode

    cloud = spec.cloud
    settings = DysonCloudSettings(
        require_version_call=cloud.require_version_call,
        otp_interval_s=cloud.otp_min_interval,
        client_id_per_call=cloud.client_id_per_call,
        token_ttl_s=cloud.credential_lifetime,
        rate_limit=cloud.rate_limit,
    )
    devices = []
    for device in spec.devices:
        unsupported = [
            name
            for name, value in (
                ("root_topic", device.root_topic),
                ("name", device.name),
                ("env_with_state", device.env_with_state),
            )
            if value is not None
        ]
        if unsupported:
            raise ConfigError(
                f"device {device.serial}: {', '.join(unsupported)} not supported by the runner yet"
            )
        if not (device.local or device.cloud):
            raise ConfigError(f"device {device.serial}: needs local, cloud or both")
        mode: Mode = (
            "both" if device.local and device.cloud else "local" if device.local else "cloud"
        )
        quirks: dict[str, Any] = {}
        for name, quirk in device.quirks.items():
            p = quirk.params
            if name == "stale_session_rst":
                quirks["stale_session_rst"] = quirk.enabled
                if quirk.enabled:
                    quirks["stale_window_s"] = float(p["window"])
            elif name == "session_cap":
                quirks["session_cap"] = int(p["max_sessions"]) if quirk.enabled else None
            elif name == "foreign_subscribe_drop":
                quirks["foreign_subscribe_drop"] = quirk.enabled
                if quirk.enabled:
                    quirks["foreign_drop_delay_ms"] = float(p["delay"]) * 1000
            elif name == "hash_wildcard":
                quirks["hash_wildcard"] = p["mode"] if quirk.enabled else "deliver"
            elif name == "syn_fragile":
                quirks["syn_fragile"] = (
                    SynFragile(
                        attempts=int(p["attempts"]),
                        window_s=float(p["window"]),
                        pause_s=float(p["blackout"]),
                    )
                    if quirk.enabled
                    else None
                )
            else:  # mute, duplicates, reorder, strict_client_id: plain switches
                quirks[name] = quirk.enabled
        devices.append(
            DysonDeviceSpec(
                product_type=device.product_type,
                serial=device.serial,
                mode=mode,
                quirks=LocalQuirks(**quirks),
            )
        )
    return DysonConfig(devices=tuple(devices), settings=settings)
