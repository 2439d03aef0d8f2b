"""How the scenario runner starts a client under test (issue [clients], DESIGN.md layout).

Every client gets the world descriptor made for it
(:meth:`harness.scenario.worlds.ScenarioWorld.descriptor`, DESIGN.md contract 1) and
records what it does as ``client.*`` events with the field ``client`` (its name), next to
the world's own events (DESIGN.md "One timeline"). Kinds:

* ``app``: a reference app of :mod:`simulators.apps` (``create_app(name, descriptor=...,
  options=..., recorder=...)``), run in process until the scenario ends; an
  ``identity_pool`` option naming one of the file's pools is passed as that pool's id,
  and ``identity_pool_id`` is passed on verbatim as ``identity_pool`` (an id the world
  may not know: AWS's ``ResourceNotFoundException``, aws-iot.md §6);
* ``paho``: :class:`PahoScript`, a scripted paho-mqtt 2.x client in process (options
  below);
* ``command``: any program (:class:`CommandClient`), run as a subprocess; it finds the
  descriptor in the file named by ``IOT_HARNESS_DESCRIPTOR``, and ``SSL_CERT_FILE`` and
  ``NODE_EXTRA_CA_CERTS`` name the world's CA (DESIGN.md contract 1). ``python`` as the
  program means the interpreter running the harness; the working directory is the
  scenario file's folder. A stdout line that is a JSON object whose ``kind`` starts with
  ``client.`` becomes that event; other output lines become ``client.output`` events (the
  first :data:`MAX_OUTPUT_LINES`), and the exit is ``client.exited`` with ``returncode``.

A command's options: ``needs_files``, paths (from the scenario file's folder) that must
exist, such as installed dependencies (``clients/node/node_modules/mqtt``), and
``install_hint``, how to get them. Other kinds (``awsiotsdk``, ``libdyson-*``), unmet
``requires``, a command whose program is not on ``PATH`` and missing ``needs_files`` make
the client unavailable (:class:`ClientUnavailable`): the runner reports the scenario as
skipped, an environment matter rather than a failure (field-bugs.md FB-21).

``paho`` options (every one optional; times in seconds):

================================  ====================================================
``auth``                          ``sigv4`` (Cognito credentials, presigned WebSocket
                                  URL, aws-iot.md §1), ``custom-auth`` (§2), ``x509``
                                  (§3); default from ``identity_pool`` / ``authorizer`` /
                                  ``thing``, else ``sigv4``
``identity_pool``, ``authorizer``, which of the world's to use (the runner's descriptor
``thing``                         lists the chosen one first)
``identity_pool_id``              a pool id used verbatim, not checked against the world
                                  (a typo'd or deleted pool: ResourceNotFoundException)
``transport``                     ``websockets`` (port 443) or ``tcp`` (custom auth: ALPN
                                  ``mqtt`` on 443; X.509: port 8883); default by ``auth``
``client_id``                     default ``paho-<client name>``; ``{instance}`` is
                                  replaced by the instance number (``instances``)
``instances``                     1: copies of this client run side by side in the same
                                  world, same options (a second consumer, FB-32: with one
                                  client id they evict each other)
``keepalive``, ``protocol``       60, ``3.1.1`` (or ``3.1``)
``connect_timeout``               5: seconds for TCP, TLS, upgrade and CONNACK
``subscribe``, ``qos``            topic filters subscribed after each CONNACK, at ``qos``
                                  (one SUBSCRIBE for all of them)
``drop_denied_filters``           false; true: one filter per SUBSCRIBE, and a filter
                                  whose SUBSCRIBE was answered by a close (AWS's answer
                                  to a forbidden filter, aws-iot.md §4.5) or a failure
                                  code is not subscribed again (FB-30 done right)
``publish``                       ``[{topic, payload, qos}]`` published after each CONNACK;
                                  ``size: N`` instead of ``payload``: N bytes of ``x``
``will``                          ``{topic, payload, qos}``: the CONNECT's Will (AWS
                                  closes at CONNECT for a QoS 2 Will, FB-31)
``reconnect``, ``reconnect_delay``  true, 0.5: reconnect after a drop or a failed attempt
``max_attempts``                  connection attempts before giving up (null: no limit)
``refresh``                       SigV4 credentials: ``when-needed`` (after a refused
                                  attempt, or once expired by the client's clock; FB-23
                                  done right), ``always``, or ``never`` (signs with its
                                  first credentials forever: FB-23)
``token_style``,                  how the URL is signed (:func:`harness.auth.sigv4.
``empty_canonical_query``         presign_url`): ``signed`` puts the session token in the
                                  canonical query (FB-27), ``true`` signs an empty one (FB-34)
``host_port``                     ``none``: sign and send ``Host: <endpoint>`` (paho ≥
                                  2.0); ``sent``: send ``Host: <endpoint>:443`` while the
                                  URL is signed without the port (paho 1.6.1, FB-28);
                                  ``signed``: sign and send it with ``:443`` (aws-iot.md
                                  §1.6: AWS takes the Host verbatim)
``token``, ``token_signature``    custom auth: the token, and ``valid`` (signed with the
                                  descriptor's key), ``invalid`` or ``missing``
``custom_auth_in``                custom auth over ``websockets``: ``headers`` (the
                                  ``x-amz-customauthorizer-*`` headers), ``query`` (the
                                  same names in the URL, signature URL-encoded) or
                                  ``design-path`` (``/mqtt?token=..&signature=..``, field
                                  design 001: AWS reads neither name, FB-35)
``username_suffix``               custom auth over ``tcp``: appended to the CONNECT
                                  username as is (SDK metrics: ``&SDK=..`` is ignored,
                                  ``?SDK=..`` corrupts the parameters, FB-33)
``sni``                           true: TLS names the endpoint (SNI); false: dials by IP
================================  ====================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import sys
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.auth import sigv4
from harness.auth.credentials import Credential
from harness.errors import ConfigError, HarnessError
from harness.events import Recorder
from harness.scenario.model import ClientSpec

if TYPE_CHECKING:
    from simulators.apps.mqtt_link import LinkSpec

__all__ = [
    "MAX_OUTPUT_LINES",
    "SUPPORTED_KINDS",
    "ClientUnavailable",
    "CommandClient",
    "PahoOptions",
    "PahoScript",
    "RunningClient",
    "create_client",
    "unmet_requirements",
]

#: The client kinds the runner can start (the model's CLIENT_KINDS has more).
SUPPORTED_KINDS = ("app", "paho", "command")
#: Output lines of a command client recorded as events; the rest are counted.
MAX_OUTPUT_LINES = 200
#: Longest output line recorded (characters).
_MAX_LINE = 500
#: Seconds a command client has to exit after SIGTERM before it is killed.
_TERMINATE_GRACE = 2.0


class ClientUnavailable(HarnessError):
    """The client cannot run here (missing package, unmet ``requires``, unsupported kind)."""


class RunningClient(Protocol):
    """A client under test: runs until ``stop`` is set (or returns earlier when it is done)."""

    name: str

    async def run(self, stop: asyncio.Event) -> None: ...


def unmet_requirements(requires: tuple[str, ...]) -> list[str]:
    """The pip requirements (``paho-mqtt<2``) that the installed packages do not meet."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    unmet: list[str] = []
    for text in requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise ConfigError(f"requires: {text!r} is not a pip requirement: {exc}") from None
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{text} (installed: {installed})")
    return unmet


def create_client(
    spec: ClientSpec,
    *,
    descriptor: Mapping[str, Any],
    recorder: Recorder,
    state_dir: Path,
    workdir: Path | None = None,
) -> RunningClient:
    """The client ``spec`` describes, ready to run. Raises :class:`ClientUnavailable` when
    it cannot run here and :class:`~harness.errors.ConfigError` for bad options."""
    unmet = unmet_requirements(spec.requires)
    if unmet:
        raise ClientUnavailable(f"client {spec.name!r} requires {', '.join(unmet)}")
    if spec.kind == "app":
        return _app(spec, descriptor=descriptor, recorder=recorder)
    if spec.kind == "paho":
        return PahoScript(spec, descriptor=descriptor, recorder=recorder)
    if spec.kind == "command":
        return CommandClient(
            spec, descriptor=descriptor, recorder=recorder, state_dir=state_dir, workdir=workdir
        )
    raise ClientUnavailable(
        f"client kind {spec.kind!r} is not supported by the scenario runner yet (issue [clients])"
    )


def _app(spec: ClientSpec, *, descriptor: Mapping[str, Any], recorder: Recorder) -> RunningClient:
    try:
        from simulators.apps import create_app
    except ImportError as exc:
        raise ClientUnavailable(f"the reference apps are not available: {exc}") from None
    assert spec.app is not None
    options = dict(spec.options)
    # A file names its pools (``identity_pool: player``); apps take the pool's id.
    pools = descriptor.get("cognito", {}).get("identity_pools", {})
    if isinstance(options.get("identity_pool"), str) and options["identity_pool"] in pools:
        options["identity_pool"] = pools[options["identity_pool"]]
    # A raw id, unchecked by the loader: an unknown pool (aws-iot.md §6).
    if "identity_pool_id" in options:
        options["identity_pool"] = options.pop("identity_pool_id")
    app = create_app(spec.app, descriptor=descriptor, options=options, recorder=recorder)
    return _NamedApp(spec.name, app)


class _NamedApp:
    """A reference app under the client's name."""

    def __init__(self, name: str, app: Any) -> None:
        self.name = name
        self._app = app

    async def run(self, stop: asyncio.Event) -> None:
        await self._app.run(stop)


# A command


class CommandClient:
    """Any program as the client under test (module docstring)."""

    def __init__(
        self,
        spec: ClientSpec,
        *,
        descriptor: Mapping[str, Any],
        recorder: Recorder,
        state_dir: Path,
        workdir: Path | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.recorder = recorder
        self.workdir = workdir
        argv = list(spec.argv)
        if not argv:
            raise ConfigError(f"client {spec.name!r}: a command needs argv")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        self.argv = argv
        self.descriptor_file = state_dir / f"descriptor-{spec.name}.json"
        self.descriptor_file.write_text(json.dumps(descriptor, indent=2), encoding="utf-8")
        ca_file = str(descriptor.get("iot", {}).get("ca_file", ""))
        self.env = {
            **os.environ,
            **spec.env,
            "IOT_HARNESS_DESCRIPTOR": str(self.descriptor_file),
            "SSL_CERT_FILE": ca_file,
            "NODE_EXTRA_CA_CERTS": ca_file,
        }
        unavailable = _command_unavailable(spec, argv[0], self.env.get("PATH"), workdir)
        if unavailable:
            raise ClientUnavailable(f"client {spec.name!r}: {unavailable}")
        self._lines = 0

    def _record(self, kind: str, **fields: Any) -> None:
        self.recorder.record(kind, client=self.name, **fields)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                cwd=self.workdir,
            )
        except OSError as exc:
            self._record("client.error", stage="start", error=f"{type(exc).__name__}: {exc}")
            return
        self._record("client.started", client_kind="command", program=Path(self.argv[0]).name)
        assert process.stdout is not None and process.stderr is not None
        readers = [
            asyncio.ensure_future(self._read(process.stdout, "stdout")),
            asyncio.ensure_future(self._read(process.stderr, "stderr")),
        ]
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if process.returncode is None:
                await self._terminate(process)
            await asyncio.gather(*readers, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await exited
            self._record("client.exited", returncode=process.returncode)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), _TERMINATE_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line beyond the stream's limit
                raw = await stream.read(65536)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if name == "stdout" and self._event_line(line):
                continue
            self._lines += 1
            if self._lines <= MAX_OUTPUT_LINES:
                self._record("client.output", stream=name, line=line[:_MAX_LINE])
            elif self._lines == MAX_OUTPUT_LINES + 1:
                self._record("client.output", stream=name, line="(further output not recorded)")

    def _event_line(self, line: str) -> bool:
        """Record a ``{"kind": "client.…", ...}`` line as that event."""
        if not line.startswith("{"):
            return False
        try:
            data = json.loads(line)
        except ValueError:
            return False
        if not isinstance(data, dict):
            return False
        kind = data.pop("kind", None)
        if not isinstance(kind, str) or not kind.startswith("client."):
            return False
        data.pop("t", None)
        conn = data.pop("conn", None)
        fields = {str(k): v for k, v in data.items() if k != "client"}
        self.recorder.record(
            kind, conn=conn if isinstance(conn, str) else None, client=self.name, **fields
        )
        return True


def _command_unavailable(
    spec: ClientSpec, program: str, path: str | None, workdir: Path | None
) -> str | None:
    """Why a command cannot run here (module docstring), or ``None``."""
    if os.sep not in program and shutil.which(program, path=path) is None:
        return f"{program} is not installed (not on PATH)"
    needs = spec.options.get("needs_files", [])
    if not isinstance(needs, list) or not all(isinstance(p, str) for p in needs):
        raise ConfigError(f"client {spec.name!r}: needs_files is a list of paths")
    hint = spec.options.get("install_hint")
    if hint is not None and not isinstance(hint, str):
        raise ConfigError(f"client {spec.name!r}: install_hint is text")
    base = workdir if workdir is not None else Path.cwd()
    absent = [p for p in needs if not (base / p).exists()]
    if not absent:
        return None
    return f"{', '.join(absent)} missing" + (f"; {hint}" if hint else "")


# A scripted paho client


_REFRESH = ("when-needed", "always", "never")
_TOKEN_STYLES = ("unsigned", "signed", "omitted")
_SIGNATURES = ("valid", "invalid", "missing")
_AUTHS = ("sigv4", "custom-auth", "x509")
_HOST_PORTS = ("none", "sent", "signed")
_CUSTOM_AUTH_IN = ("headers", "query", "design-path")
#: The WebSocket port of AWS IoT's URL (aws-iot.md §1.1, §1.6).
_WSS_PORT = 443


@dataclass(frozen=True, kw_only=True)
class PahoOptions:
    """The ``paho`` client's options (module docstring), validated."""

    auth: str
    transport: str
    client_id: str
    keepalive: int = 60
    protocol: str = "3.1.1"
    connect_timeout: float = 5.0
    subscribe: tuple[str, ...] = ()
    qos: int = 1
    publish: tuple[tuple[str, bytes, int], ...] = ()
    reconnect: bool = True
    reconnect_delay: float = 0.5
    max_attempts: int | None = None
    refresh: str = "when-needed"
    token_style: str = "unsigned"  # noqa: S105 - a signing style, not a secret
    empty_canonical_query: bool = False
    token: str = "harness-token"  # noqa: S105 - a test token, not a secret
    token_signature: str = "valid"  # noqa: S105 - valid, invalid or missing
    sni: bool = True
    identity_pool_id: str | None = None
    instances: int = 1
    drop_denied_filters: bool = False
    will: tuple[str, bytes, int] | None = None
    host_port: str = "none"
    custom_auth_in: str = "headers"
    username_suffix: str = ""

    @classmethod
    def parse(cls, name: str, options: Mapping[str, Any]) -> PahoOptions:
        known = {
            "auth", "transport", "client_id", "keepalive", "protocol", "connect_timeout",
            "subscribe", "qos", "publish", "reconnect", "reconnect_delay", "max_attempts",
            "refresh", "token_style", "empty_canonical_query", "token", "token_signature",
            "sni", "identity_pool", "authorizer", "thing", "identity_pool_id", "instances",
            "drop_denied_filters", "will", "host_port", "custom_auth_in", "username_suffix",
        }  # fmt: skip
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"client {name!r}: unknown paho option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )

        def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = options.get(key, default)
            if value is not None and (
                not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
            ):
                raise ConfigError(f"client {name!r}: option {key} has the wrong type: {value!r}")
            return value

        def choice(key: str, choices: tuple[str, ...], default: str) -> str:
            value = get(key, str, default)
            if value not in choices:
                raise ConfigError(f"client {name!r}: option {key} is one of {', '.join(choices)}")
            return str(value)

        if "auth" in options:
            auth = choice("auth", _AUTHS, "sigv4")
        elif "authorizer" in options:
            auth = "custom-auth"
        elif "thing" in options:
            auth = "x509"
        else:
            auth = "sigv4"
        transport = choice(
            "transport", ("websockets", "tcp"), "tcp" if auth == "x509" else "websockets"
        )
        if auth == "sigv4" and transport != "websockets":
            raise ConfigError(f"client {name!r}: SigV4 needs transport websockets (aws-iot.md §1)")
        if auth == "x509" and transport != "tcp":
            raise ConfigError(f"client {name!r}: X.509 needs transport tcp (aws-iot.md §3)")
        publish = [_message(name, "publish", item) for item in get("publish", list, []) or []]
        will_item = get("will", Mapping, None)
        will = _message(name, "will", will_item) if will_item is not None else None
        instances = get("instances", int, 1)
        if instances is None or instances < 1:
            raise ConfigError(f"client {name!r}: option instances must be a whole number >= 1")
        subscribe = get("subscribe", list, []) or []
        if not all(isinstance(t, str) for t in subscribe):
            raise ConfigError(f"client {name!r}: subscribe is a list of topic filters")
        numbers = {
            key: get(key, (int, float), default)
            for key, default in (("connect_timeout", 5.0), ("reconnect_delay", 0.5))
        }
        for key, value in numbers.items():
            if value is None or value < 0:
                raise ConfigError(f"client {name!r}: option {key} must be seconds >= 0")
        max_attempts = get("max_attempts", int, None)
        return cls(
            auth=auth,
            transport=transport,
            client_id=get("client_id", str, None) or f"paho-{name}",
            keepalive=get("keepalive", int, 60),
            protocol=choice("protocol", ("3.1", "3.1.1"), "3.1.1"),
            connect_timeout=float(numbers["connect_timeout"]),
            subscribe=tuple(subscribe),
            qos=get("qos", int, 1),
            publish=tuple(publish),
            reconnect=get("reconnect", bool, True),
            reconnect_delay=float(numbers["reconnect_delay"]),
            max_attempts=max_attempts,
            refresh=choice("refresh", _REFRESH, "when-needed"),
            token_style=choice("token_style", _TOKEN_STYLES, "unsigned"),
            empty_canonical_query=get("empty_canonical_query", bool, False),
            token=get("token", str, "harness-token"),
            token_signature=choice("token_signature", _SIGNATURES, "valid"),
            sni=get("sni", bool, True),
            identity_pool_id=get("identity_pool_id", str, None),
            instances=instances,
            drop_denied_filters=get("drop_denied_filters", bool, False),
            will=will,
            host_port=choice("host_port", _HOST_PORTS, "none"),
            custom_auth_in=choice("custom_auth_in", _CUSTOM_AUTH_IN, "headers"),
            username_suffix=get("username_suffix", str, "") or "",
        )


def _message(name: str, option: str, item: Any) -> tuple[str, bytes, int]:
    """A ``{topic, payload | size, qos}`` item of ``publish`` or ``will``."""
    if not isinstance(item, Mapping) or not isinstance(item.get("topic"), str):
        raise ConfigError(f"client {name!r}: {option} items are {{topic, payload, qos}}")
    unknown = sorted(set(item) - {"topic", "payload", "size", "qos"})
    if unknown:
        raise ConfigError(f"client {name!r}: {option} has no key {', '.join(map(str, unknown))}")
    qos = item.get("qos", 0)
    if not isinstance(qos, int) or isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ConfigError(f"client {name!r}: {option} qos is 0, 1 or 2")
    size = item.get("size")
    if size is not None:
        if "payload" in item:
            raise ConfigError(f"client {name!r}: {option} takes payload or size, not both")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ConfigError(f"client {name!r}: {option} size is a whole number of bytes")
        return item["topic"], b"x" * size, qos
    payload = item.get("payload", "")
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return item["topic"], data.encode(), qos


class _Refused(Exception):
    """A Cognito call answered with an error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PahoScript:
    """A scripted paho-mqtt 2.x client in process (options: module docstring).

    It connects, subscribes and publishes as told, and reconnects after a drop; with
    SigV4 it fetches credentials from the fake Cognito over HTTPS (GetId once,
    GetCredentialsForIdentity per refresh) and presigns the WebSocket URL with its own
    clock, as a browser does (aws-iot.md §1, §6). paho runs through
    :class:`simulators.apps.mqtt_link.MqttLink`, which dials the world's address while
    TLS names the endpoint. With ``instances`` > 1 it runs that many copies side by side,
    each recording ``instance`` (1, 2, ...) in its events.
    """

    def __init__(
        self,
        spec: ClientSpec,
        *,
        descriptor: Mapping[str, Any],
        recorder: Recorder,
        instance: int | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.options = PahoOptions.parse(spec.name, spec.options)
        self.recorder = recorder
        self.descriptor = descriptor
        iot = descriptor.get("iot")
        if not isinstance(iot, Mapping):
            raise ConfigError("the descriptor has no iot section")
        self.iot = iot
        self.instance = instance
        self.client_id = self.options.client_id.replace("{instance}", str(instance or 1))
        self._identity: str | None = None
        self._credential: Credential | None = None
        self._stale = False
        #: Filters answered by a close or a failure code (``drop_denied_filters``).
        self._denied: set[str] = set()

    def _record(self, kind: str, **fields: Any) -> None:
        if self.instance is not None:
            fields["instance"] = self.instance
        self.recorder.record(kind, client=self.name, **fields)

    def _context(self, *, alpn: list[str] | None = None) -> ssl.SSLContext:
        # Always verified; by IP address (``sni: false``) no SNI is sent and the
        # certificate's IP SAN is checked.
        context = ssl.create_default_context(cafile=str(self.iot["ca_file"]))
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    async def run(self, stop: asyncio.Event) -> None:
        opts = self.options
        if opts.instances > 1 and self.instance is None:
            copies = [
                PahoScript(
                    self.spec, descriptor=self.descriptor, recorder=self.recorder, instance=i
                )
                for i in range(1, opts.instances + 1)
            ]
            await asyncio.gather(*(copy.run(stop) for copy in copies))
            return
        self._record("client.started", client_kind="paho", auth=opts.auth, transport=opts.transport)
        attempt = 0
        try:
            while not stop.is_set():
                attempt += 1
                if opts.max_attempts is not None and attempt > opts.max_attempts:
                    self._record("client.gave_up", attempts=attempt - 1)
                    return
                await self._attempt(attempt, stop)
                if stop.is_set() or not opts.reconnect:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), opts.reconnect_delay)
        finally:
            self._record("client.stopped", attempts=attempt)

    async def _attempt(self, attempt: int, stop: asyncio.Event) -> None:
        from simulators.apps.mqtt_link import LinkClosed, LinkMessage, LinkSubscribed, MqttLink

        try:
            spec = await self._link_spec()
        except _Refused as exc:
            self._stale = True
            self._record("client.error", stage="credentials", reason=exc.reason, error=str(exc))
            return
        self._record("client.connecting", attempt=attempt, client_id=spec.client_id)
        link = MqttLink(spec)
        if self.options.will is not None:
            topic, payload, qos = self.options.will
            link.client.will_set(topic, payload, qos)
        try:
            outcome = await link.open()
            if not outcome.ok:
                self._stale = True
                self._record(
                    "client.error", stage="connect", reason=outcome.reason, error=outcome.error
                )
                return
            self._stale = False
            self._record("client.connected", attempt=attempt, client_id=spec.client_id)
            filters = [t for t in self.options.subscribe if t not in self._denied]
            one_by_one = self.options.drop_denied_filters
            in_flight: str | None = None
            if filters and one_by_one:
                in_flight = filters.pop(0)
                link.subscribe([(in_flight, self.options.qos)])
            elif filters:
                link.subscribe([(topic, self.options.qos) for topic in filters])
            for topic, payload, qos in self.options.publish:
                link.publish(topic, payload, qos)
                self._record("client.published", topic=topic, qos=qos, size=len(payload))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(link.next_event())
                    done, _ = await asyncio.wait(
                        {nxt, stopping}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if nxt not in done:
                        nxt.cancel()
                        return
                    event = nxt.result()
                    if isinstance(event, LinkClosed):
                        self._record("client.disconnected", rc=event.rc)
                        if in_flight is not None:
                            # Closed while a SUBSCRIBE waited for its SUBACK: AWS's
                            # answer to a forbidden filter (aws-iot.md §4.5, FB-30).
                            self._deny(in_flight, "closed after SUBSCRIBE, no SUBACK")
                        return
                    if isinstance(event, LinkMessage):
                        self._record("client.message", topic=event.topic, size=len(event.payload))
                    elif isinstance(event, LinkSubscribed):
                        self._record("client.subscribed", granted=list(event.granted))
                        if in_flight is not None:
                            if any(code >= 0x80 for code in event.granted):
                                self._deny(in_flight, "SUBACK failure code")
                            in_flight = filters.pop(0) if filters else None
                            if in_flight is not None:
                                link.subscribe([(in_flight, self.options.qos)])
            finally:
                stopping.cancel()
        finally:
            await link.close()

    def _deny(self, topic_filter: str, why: str) -> None:
        self._denied.add(topic_filter)
        self._record("client.filter_dropped", topic=topic_filter, why=why)

    async def _link_spec(self) -> LinkSpec:
        from simulators.apps.mqtt_link import LinkSpec

        opts, iot = self.options, self.iot
        endpoint = str(iot["endpoint"])
        host = str(iot.get("connect_host", "127.0.0.1"))
        common: dict[str, Any] = {
            "client_id": self.client_id,
            "protocol": opts.protocol,
            "keepalive": opts.keepalive,
            "connect_timeout": opts.connect_timeout,
        }
        name = endpoint if opts.sni else host
        if opts.auth == "x509":
            thing = _first(self.descriptor, "things", "a thing (world.things) for X.509")
            context = self._context()
            context.load_cert_chain(thing["cert_file"], thing["key_file"])
            return LinkSpec(
                host=name,
                port=8883,
                dial=(host, int(iot["mqtts_port"])),
                transport="tcp",
                tls=context,
                **common,
            )
        dial = (host, int(iot["wss_port"]))
        if opts.auth == "custom-auth":
            authorizer = _first(self.descriptor, "authorizers", "a custom authorizer")
            params = self._custom_auth(authorizer)
            if opts.transport == "tcp":
                query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
                return LinkSpec(
                    host=name,
                    port=443,
                    dial=dial,
                    transport="tcp",
                    tls=self._context(alpn=["mqtt"]),
                    username=f"{self.client_id}?{query}{opts.username_suffix}",
                    **common,
                )
            path, headers = _custom_auth_upgrade(params, opts.custom_auth_in)
            return LinkSpec(
                host=name,
                port=443,
                dial=dial,
                transport="websockets",
                ws_path=path,
                ws_headers=headers,
                tls=self._context(),
                **common,
            )
        credential = await self._credentials()
        # aws-iot.md §1.6: AWS signs the Host it received, verbatim (FB-28).
        signed_host = f"{endpoint}:{_WSS_PORT}" if opts.host_port == "signed" else endpoint
        sent_host = endpoint if opts.host_port == "none" else f"{endpoint}:{_WSS_PORT}"
        url = sigv4.presign_url(
            host=signed_host,
            credential=credential,
            region=str(iot["region"]),
            now=time.time(),  # the client's own clock, as a browser signs
            token_style=opts.token_style,  # type: ignore[arg-type]
            empty_canonical_query=opts.empty_canonical_query,
        )
        parts = urllib.parse.urlsplit(url)
        return LinkSpec(
            host=name,
            port=443,
            dial=dial,
            transport="websockets",
            ws_path=f"{parts.path}?{parts.query}",
            ws_headers={"Host": sent_host},
            tls=self._context(),
            **common,
        )

    def _custom_auth(self, authorizer: Mapping[str, Any]) -> dict[str, str]:
        from harness.pki import TokenSigningKey

        opts = self.options
        token_key = str(authorizer.get("token_key") or "token")
        params = {"x-amz-customauthorizer-name": str(authorizer["name"]), token_key: opts.token}
        key_file = authorizer.get("private_key_file")
        signature = opts.token_signature
        if signature != _SIGNATURES[2] and key_file:
            key = TokenSigningKey.load(str(key_file))
            signed = opts.token if signature == _SIGNATURES[0] else opts.token + "-tampered"
            params["x-amz-customauthorizer-signature"] = key.sign(signed)
        return params

    # Cognito (aws-iot.md §6)

    async def _credentials(self) -> Credential:
        refresh = self.options.refresh
        held = self._credential
        if held is not None:
            expired = held.expires_at is not None and time.time() >= held.expires_at
            if refresh == "never" or (refresh == "when-needed" and not (expired or self._stale)):
                return held
        cognito = self.descriptor.get("cognito")
        if not isinstance(cognito, Mapping) or not cognito.get("url"):
            raise ConfigError("SigV4 needs Cognito: the descriptor has no cognito.url")
        pool_id = self.options.identity_pool_id or str(cognito.get("identity_pool_id") or "")
        if not pool_id:
            raise ConfigError("SigV4 needs an identity pool: the descriptor names none")
        url = str(cognito["url"])
        if self._identity is None:
            answer = await self._cognito(url, "GetId", {"IdentityPoolId": pool_id})
            self._identity = str(answer["IdentityId"])
        answer = await self._cognito(
            url, "GetCredentialsForIdentity", {"IdentityId": self._identity}
        )
        values = answer["Credentials"]
        credential = Credential(
            access_key_id=str(values["AccessKeyId"]),
            secret_access_key=str(values["SecretKey"]),
            session_token=str(values["SessionToken"]),
            expires_at=float(values["Expiration"]),
            principal=self._identity,
        )
        self.recorder.add_secret(credential.secret_access_key)
        self.recorder.add_secret(credential.session_token)
        self._credential = credential
        self._record(
            "client.credentials",
            source="cognito",
            ok=True,
            access_key_id=credential.access_key_id,
            expiration=credential.expires_at,
        )
        return credential

    async def _cognito(self, url: str, operation: str, body: Mapping[str, Any]) -> Any:
        """One AWS JSON 1.1 call (``X-Amz-Target``), over HTTPS trusting the world's CA."""
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 443
        payload = json.dumps(body).encode()
        head = (
            f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/x-amz-json-1.1\r\n"
            f"X-Amz-Target: AWSCognitoIdentityService.{operation}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, ssl=self._context())
                try:
                    writer.write(head + payload)
                    await writer.drain()
                    header = await reader.readuntil(b"\r\n\r\n")
                    status, length = _status_and_length(header)
                    data = await reader.readexactly(length)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise _Refused("network", f"{operation}: {type(exc).__name__}: {exc}") from None
        except asyncio.LimitOverrunError:
            raise _Refused("bad-answer", f"{operation}: an oversized response head") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise _Refused("bad-answer", f"{operation}: HTTP {status}, not JSON") from None
        if status != 200:
            kind = str(answer.get("__type", "error")) if isinstance(answer, dict) else "error"
            raise _Refused(kind, f"{operation}: HTTP {status} {kind}")
        return answer


def _custom_auth_upgrade(
    params: Mapping[str, str], where: str
) -> tuple[str, dict[str, str] | None]:
    """The upgrade's path and headers carrying custom-auth ``params`` (aws-iot.md §2.1).

    AWS reads ``x-amz-customauthorizer-name``, ``-signature`` and the token key from the
    headers or the query string; field design 001 puts ``token`` and ``signature`` in the
    path under names AWS does not read (field-bugs.md FB-35).
    """
    if where == "headers":
        return "/mqtt", dict(params)
    if where == "query":
        return "/mqtt?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote), None
    token = next(v for k, v in params.items() if not k.startswith("x-amz-customauthorizer-"))
    signature = params.get("x-amz-customauthorizer-signature", "")
    return f"/mqtt?token={token}&signature={signature}", None


def _status_and_length(head: bytes) -> tuple[int, int]:
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise _Refused("bad-answer", f"not an HTTP status line: {lines[0][:80]!r}") from None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            with contextlib.suppress(ValueError):
                length = int(value.strip())
    return status, length


def _first(descriptor: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
    items = descriptor.get(key)
    if not isinstance(items, list) or not items or not isinstance(items[0], Mapping):
        raise ConfigError(f"the client needs {what}; the descriptor's {key} is empty")
    return items[0]
