"""The sandbox: a world and a client command in a private network and mount namespace.

Issue [clients], "Running any client"; DESIGN.md, "Loopback, port 0". Unmodified clients
hard-code ``<prefix>-ats.iot.<region>.amazonaws.com:443`` (and ``:8883``),
``https://cognito-identity.<region>.amazonaws.com``, ``https://appapi.cp.dyson.com`` and
``<serial>.local:1883`` (aws-iot.md §3, §6; dyson.md §1, §6). Inside the sandbox those
names and ports are the world's, for a client in any language, with no change to it and
none to the host:

* ``unshare -n -m`` (``unshare -r -n -m``, a user namespace, when not root) gives the
  command its own network namespace, where only loopback exists and the real ports are
  free, and its own mount namespace, made private (``mount --make-rprivate /``) before a
  private hosts file is bind-mounted over ``/etc/hosts``. The host's files and network are
  never touched: the inner process refuses to mount anything unless its namespaces differ
  from the launcher's.
* The gateway binds ``127.0.0.1`` on 443 (WSS, ALPN ``mqtt``) and 8883 (MQTT over TLS)
  itself. Every other name of :meth:`World.routes` (Cognito, the Dyson API hosts, each
  device's ``<serial>.local``) gets its own loopback address, ``127.0.0.2`` onwards (a fresh
  namespace answers all of 127/8), because several of them want port 443; where the world
  did not bind that address and well-known port itself, a :class:`LoopbackRelay` listens
  there and copies bytes to the bound port. TLS passes through a relay untouched, so the
  client still sends the real name as SNI and checks the world's certificate for it.
* The command gets ``IOT_HARNESS_DESCRIPTOR`` (the world descriptor of DESIGN.md, with a
  ``sandbox`` section naming the hosts, and ``things`` with certificate and key files for
  each ``--thing``), and ``SSL_CERT_FILE``, ``NODE_EXTRA_CA_CERTS``, ``REQUESTS_CA_BUNDLE``,
  ``AWS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` naming the harness CA (botocore reads only
  ``AWS_CA_BUNDLE``; OpenSSL, Python's ``ssl`` and paho read ``SSL_CERT_FILE``).

Two processes: :func:`launch` (the ``iot-harness sandbox`` process) checks that
``unshare``, ``mount`` and ``ip`` are there and allowed, writes :class:`SandboxSettings`
to the state folder and re-executes ``python -m harness.sandbox SETTINGS`` under
``unshare``; that process (:func:`run_inside`) brings loopback up, starts the world,
mounts the hosts file, runs the command with stdin, stdout and stderr passed through,
stops the world when it ends, and exits with its exit code (128 + N after signal N).
SIGTERM and SIGHUP are passed on to the command; SIGINT is left to the command (a
terminal's Ctrl-C reaches it directly), and the world stops once it has exited.

Where the host's ``/etc/nsswitch.conf`` asks something before the hosts file (mDNS for
``.local``), a private copy asking ``files`` first is mounted over it the same way. The
timeline gets ``sandbox.command`` (``program``: its name only, arguments may hold secrets;
``hosts``) and ``sandbox.exit`` (``program``, ``status``).

A relay is not the listener: the client's SYN is answered by the relay, and a refused or
unanswered connection upstream becomes a reset after the connection was accepted. Where
that matters (a device's ``syn_fragile`` quirk), the world must bind the address and the
well-known port itself; :func:`plan_layout` then plans no relay for it.

``--scenario``: the sandbox starts the scenario's world as far as it can on its own
(gateway settings, Cognito on/off, newcomer defaults, clock offset, identity pools, things
with good certificates, Dyson devices by serial, profile and mode), says in one line each
what it leaves out (clients, faults, custom authorizers, certificate choices, device
quirks), and judges the expectations once the command has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from harness.errors import ConfigError
from harness.events import Event
from harness.resolver import Route

if TYPE_CHECKING:
    from harness.scenario import Scenario
    from harness.world import World, WorldConfig

__all__ = [
    "CA_ENVIRONMENT",
    "DESCRIPTOR_ENVIRONMENT",
    "GATEWAY_ADDRESS",
    "Layout",
    "LoopbackRelay",
    "Relay",
    "SandboxSettings",
    "SandboxUnavailable",
    "check_environment",
    "client_environment",
    "hosts_file_text",
    "launch",
    "nsswitch_text",
    "plan_layout",
    "run_inside",
    "unshare_argv",
]

#: Where the command finds the world descriptor's path (DESIGN.md, contract 1).
DESCRIPTOR_ENVIRONMENT = "IOT_HARNESS_DESCRIPTOR"
#: Variables naming the harness CA: OpenSSL / Python / paho, Node.js, requests, botocore,
#: curl. Each library reads its own; setting them all covers clients in any language.
CA_ENVIRONMENT = (
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "AWS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)
#: The gateway's address in the sandbox; it binds the well-known ports here itself.
GATEWAY_ADDRESS = "127.0.0.1"
#: glibc's name-service switch; mounted over privately only if it asks files too late.
NSSWITCH = "/etc/nsswitch.conf"
#: AWS's well-known ports (aws-iot.md §3).
HTTPS_PORT = 443
MQTTS_PORT = 8883
#: Exit codes of a command that cannot be started, as shells use them.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
#: Exit code of harness misuse and environment problems (as harness.cli).
EXIT_USAGE = 2
#: The probe ``launch`` runs under ``unshare`` before anything else; seconds allowed.
PROBE = "mount --make-rprivate / && ip link set lo up"
PROBE_TIMEOUT = 30.0
_RELAY_CHUNK = 65536
_PREFIX = "iot-harness sandbox"


class SandboxUnavailable(ConfigError):
    """This machine cannot make the sandbox: no ``unshare``/``ip``/``mount``, or refused."""


# The settings the launcher hands to the process inside the namespaces


@dataclass(frozen=True, kw_only=True)
class SandboxSettings:
    """Everything the inner process needs, written as JSON to the state folder.

    ``None`` world options mean "the scenario's, else the world's default" (WorldConfig,
    GatewayConfig). ``outer_namespaces`` are the launcher's ``/proc/self/ns`` links: the
    inner process mounts nothing unless its own differ.
    """

    command: tuple[str, ...]
    state_dir: Path
    events_file: Path | None = None
    # The world (as ``iot-harness serve``)
    region: str | None = None
    endpoint_prefix: str | None = None
    account_id: str | None = None
    sni: str | None = None
    credential_lifetime: float | None = None
    engine: str | None = None
    devices: str | None = None
    things: tuple[str, ...] = ()
    scenario: Path | None = None
    # Output
    log_events: bool = False
    # Namespaces
    user_namespace: bool = False
    outer_namespaces: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "things", tuple(self.things))
        object.__setattr__(self, "outer_namespaces", dict(self.outer_namespaces))
        if not self.command:
            raise ConfigError(
                "no command to run: give it after --, e.g. iot-harness sandbox -- python app.py"
            )
        if len(set(self.things)) != len(self.things):
            raise ConfigError(f"--thing names repeat: {', '.join(self.things)}")

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            data[f.name] = value
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SandboxSettings:
        """The settings :meth:`to_json` wrote; :class:`ConfigError` for anything else."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            for name, value in data.items():
                _check_setting(name, value)
            for name in ("state_dir", "events_file", "scenario"):
                if data.get(name) is not None:
                    data[name] = Path(data[name])
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"unreadable sandbox settings: {exc}") from None


_STRINGS = frozenset(
    [
        "state_dir",
        "events_file",
        "region",
        "endpoint_prefix",
        "account_id",
        "sni",
        "engine",
        "devices",
        "scenario",
    ]
)


def _check_setting(name: str, value: Any) -> None:
    """JSON types of :class:`SandboxSettings` fields (TypeError names the wrong one)."""
    if name in ("command", "things"):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif name == "outer_namespaces":
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    elif name in ("log_events", "user_namespace"):
        ok = isinstance(value, bool)
    elif name == "credential_lifetime":
        ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    elif name in _STRINGS:
        ok = value is None or isinstance(value, str)
    else:
        raise TypeError(f"unknown setting {name!r}")
    if not ok:
        raise TypeError(f"setting {name!r} has the wrong type")


# Addresses, relays and the hosts file (pure)


@dataclass(frozen=True)
class Relay:
    """Listen on ``listen_address:listen_port``, copy bytes to ``target_address:target_port``."""

    names: tuple[str, ...]
    listen_address: str
    listen_port: int
    target_address: str
    target_port: int


@dataclass(frozen=True)
class Layout:
    """Which loopback address each name resolves to, and the relays that make it true."""

    hosts: Mapping[str, str]
    relays: tuple[Relay, ...]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _addresses(taken: set[str]) -> Iterator[str]:
    """``127.0.0.2``, ``127.0.0.3``, ... skipping ``taken`` (the whole of 127/8 is local)."""
    network = ipaddress.ip_network("127.0.0.0/8")
    for address in network.hosts():
        text = str(address)
        if text != GATEWAY_ADDRESS and text not in taken:
            yield text


def plan_layout(routes: Mapping[str, Route]) -> Layout:
    """Give every routed name a loopback address where its well-known ports are served.

    A route the world already serves on a loopback address at the well-known ports (the
    gateway on ``127.0.0.1``: 443 → 443, 8883 → 8883) keeps its address. Names sharing a
    route (``appapi.cp.dyson.com`` and ``.cn``) share an address. Every other route gets
    the next free address from ``127.0.0.2`` and one :class:`Relay` per well-known port,
    because a loopback address can hold port 443 only once (issue [clients]).
    """
    groups: dict[tuple[str, tuple[tuple[int, int], ...]], list[str]] = {}
    for name, route in routes.items():
        key = (route.address, tuple(sorted(route.ports.items())))
        groups.setdefault(key, []).append(name.rstrip(".").lower())
    hosts: dict[str, str] = {}
    direct: set[str] = set()
    relayed: list[tuple[tuple[str, tuple[tuple[int, int], ...]], list[str]]] = []
    for key, names in groups.items():
        address, ports = key
        if _is_loopback(address) and all(known == bound for known, bound in ports):
            direct.add(address)
            hosts.update(dict.fromkeys(names, address))
        else:
            relayed.append((key, names))
    free = _addresses(direct)
    relays: list[Relay] = []
    for (address, ports), names in relayed:
        listen = next(free)
        hosts.update(dict.fromkeys(names, listen))
        relays.extend(Relay(tuple(names), listen, known, address, bound) for known, bound in ports)
    return Layout(hosts=hosts, relays=tuple(relays))


def hosts_file_text(hosts: Mapping[str, str], original: str = "") -> str:
    """The private ``/etc/hosts``: the sandbox's names first, then the host's own lines
    (so ``localhost`` and the machine's name still resolve), minus any line that names
    one of the sandbox's names (the first match wins in glibc, but be unambiguous)."""
    lines = [
        "# iot-harness sandbox: a private /etc/hosts, mounted in this mount namespace only",
        f"{GATEWAY_ADDRESS}\tlocalhost",
    ]
    lines.extend(f"{address}\t{name}" for name, address in hosts.items())
    ours = {name.lower() for name in hosts}
    kept = []
    for line in original.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and ours.intersection(w.lower() for w in words[1:]):
            continue
        kept.append(line)
    if kept:
        lines.append("# the host's /etc/hosts:")
        lines.extend(kept)
    return "\n".join(lines) + "\n"


_NSSWITCH_HOSTS = "hosts: files dns  # iot-harness sandbox: the private hosts file first"


def nsswitch_text(original: str) -> str | None:
    """A private ``nsswitch.conf`` whose ``hosts`` line asks the hosts file first, or
    ``None`` when the host's already does (the usual ``files mdns4_minimal ... dns``).

    Without it, a ``hosts: mdns4_minimal [NOTFOUND=return] files`` machine would answer
    ``<serial>.local`` from multicast DNS, which cannot see the sandbox's names.
    """
    lines = original.splitlines()
    for i, line in enumerate(lines):
        words = line.split("#", 1)[0].split()
        if words and words[0] == "hosts:":
            if words[1:2] == ["files"]:
                return None
            lines[i] = _NSSWITCH_HOSTS
            return "\n".join(lines) + "\n"
    # No hosts line: glibc's default asks DNS first ("dns [!UNAVAIL=return] files").
    return "\n".join([*lines, _NSSWITCH_HOSTS]) + "\n"


def unshare_argv(argv: Sequence[str], *, user_namespace: bool) -> list[str]:
    """``argv`` run in a new network and mount namespace (and a user namespace where the
    caller is not root: ``-r`` maps it to root inside, which may then mount and bind)."""
    flags = ["-r", "-n", "-m"] if user_namespace else ["-n", "-m"]
    return ["unshare", *flags, "--", *argv]


def client_environment(
    base: Mapping[str, str], *, descriptor_file: Path, ca_file: Path
) -> dict[str, str]:
    """The command's environment: ``base`` plus the descriptor and the harness CA."""
    env = dict(base)
    env[DESCRIPTOR_ENVIRONMENT] = str(descriptor_file)
    for name in CA_ENVIRONMENT:
        env[name] = str(ca_file)
    return env


def exit_status(returncode: int) -> int:
    """A ``subprocess`` return code as a shell reports it: 128 + N after signal N."""
    return 128 - returncode if returncode < 0 else returncode


# The launcher (outside the namespaces)


def namespaces() -> dict[str, str]:
    """This process's network and mount namespaces (``net:[4026531840]``, ...)."""
    out = {}
    for kind in ("net", "mnt"):
        with contextlib.suppress(OSError):
            out[kind] = os.readlink(f"/proc/self/ns/{kind}")
    return out


def check_environment(*, user_namespace: bool) -> None:
    """Raise :class:`SandboxUnavailable` with one clear sentence unless this machine can
    make the sandbox: the tools exist, and ``unshare`` may make the namespaces, make the
    mounts private and bring loopback up (tried once in a throw-away namespace)."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the sandbox needs Linux namespaces; this is {sys.platform}")
    for tool, package in (("unshare", "util-linux"), ("mount", "mount"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"`{tool}` is not installed (Debian package {package})")
    try:
        probe = subprocess.run(  # noqa: S603 - fixed argv, no shell on our side
            unshare_argv(["sh", "-c", PROBE], user_namespace=user_namespace),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"cannot run unshare: {exc}") from None
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        if user_namespace:
            hint = (
                "unprivileged user namespaces look disabled here (see sysctl "
                "kernel.unprivileged_userns_clone, user.max_user_namespaces, or AppArmor's "
                "kernel.apparmor_restrict_unprivileged_userns); run as root instead"
            )
        else:
            hint = "this container may forbid new namespaces (it needs CAP_SYS_ADMIN)"
        raise SandboxUnavailable(
            f"unshare refused to make a private network and mount namespace ({said}); {hint}"
        )


def launch(settings: SandboxSettings, *, stderr: TextIO | None = None) -> int:
    """Run the sandbox (the ``iot-harness sandbox`` process); returns the command's exit
    status. Raises :class:`SandboxUnavailable` (or ``ConfigError``) before anything runs
    when it cannot work here."""
    err = stderr if stderr is not None else sys.stderr
    check_environment(user_namespace=settings.user_namespace)
    if shutil.which(settings.command[0]) is None:
        print(f"{_PREFIX}: error: command not found: {settings.command[0]}", file=err, flush=True)
        return EXIT_NOT_FOUND
    settings = dataclasses.replace(settings, outer_namespaces=namespaces())
    try:
        settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings_file = settings.state_dir / "sandbox.json"
        settings_file.write_text(settings.to_json(), encoding="utf-8")
    except OSError as exc:
        where = exc.filename or settings.state_dir
        raise ConfigError(f"cannot write to {where}: {exc.strerror}") from None
    argv = unshare_argv(
        [sys.executable, "-m", "harness.sandbox", str(settings_file)],
        user_namespace=settings.user_namespace,
    )
    with _passing_signals() as forward:
        inner = subprocess.Popen(argv)  # noqa: S603 - fixed argv; stdio passed through
        forward.append(inner)
        returncode = inner.wait()
    return exit_status(returncode)


@contextlib.contextmanager
def _passing_signals() -> Iterator[list[subprocess.Popen[bytes]]]:
    """While the inner process runs: SIGTERM and SIGHUP go on to it; SIGINT is swallowed
    here (a terminal's Ctrl-C reaches the command itself, in the same process group, and
    the world must outlive the command to stop cleanly). Handlers, not SIG_IGN: an
    ignored signal would stay ignored in the command."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(OSError):
                child.send_signal(signum)

    def swallow(signum: int, frame: FrameType | None) -> None:
        return None

    previous: dict[int, Any] = {}
    wanted = {signal.SIGTERM: forward, signal.SIGHUP: forward, signal.SIGINT: swallow}
    for signum, handler in wanted.items():
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, handler)
    try:
        yield children
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


# Inside the namespaces


def _run_tool(argv: Sequence[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    except OSError as exc:
        raise SandboxUnavailable(f"cannot run {argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SandboxUnavailable(f"`{' '.join(argv)}` failed: {said}")


def enter_network(settings: SandboxSettings) -> None:
    """Make the mounts private and bring loopback up; refuse outside fresh namespaces.

    The check is what keeps the host safe: a bind mount over ``/etc/hosts`` in the host's
    own mount namespace would change the machine's name resolution.
    """
    mine = namespaces()
    for kind in ("net", "mnt"):
        theirs = settings.outer_namespaces.get(kind)
        if not theirs or not mine.get(kind) or mine[kind] == theirs:
            raise SandboxUnavailable(
                f"not in a fresh {kind} namespace; refusing to change mounts or the network "
                "(run through `iot-harness sandbox`, which uses unshare)"
            )
    _run_tool(["mount", "--make-rprivate", "/"])
    _run_tool(["ip", "link", "set", "lo", "up"])


def mount_private(text: str, path: Path, *, over: str) -> None:
    """Write ``text`` to ``path`` (mode 0644: any user's resolver reads it) and bind-mount
    it over ``over`` (``/etc/hosts``), in this private mount namespace only."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    _run_tool(["mount", "--bind", str(path), over])


class LoopbackRelay:
    """A TCP relay from a well-known address and port to where the world really listens.

    It copies bytes both ways, passes a half-close on (``write_eof``) and a reset as an
    abort of the other side, so a client sees the server's behaviour, TLS included. On
    exit it aborts the connections it carries rather than cancelling their tasks (an
    asyncio stream handler cancelled before it starts leaks its transport in 3.11).
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._server: asyncio.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The port it listens on (the bound one when the relay was given port 0)."""
        if self._server is None or not self._server.sockets:
            return self.relay.listen_port
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> LoopbackRelay:
        r = self.relay
        self._server = await asyncio.start_server(self._accept, r.listen_address, r.listen_port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a handler always runs in a task
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if not self._closing:
                await self._relay(reader, writer)
        finally:
            writer.transport.abort() if self._closing else writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        r = self.relay
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                r.target_address, r.target_port
            )
        except OSError:
            writer.transport.abort()  # as the closed port would: a reset
            return
        self._writers.add(upstream)

        def abort() -> None:
            writer.transport.abort()
            upstream.transport.abort()

        try:
            if self._closing:
                abort()
                return
            await asyncio.gather(
                _pipe(reader, upstream, abort), _pipe(upstream_reader, writer, abort)
            )
        finally:
            upstream.transport.abort() if self._closing else upstream.close()
            self._writers.discard(upstream)


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, abort: Callable[[], None]
) -> None:
    try:
        while data := await source.read(_RELAY_CHUNK):
            sink.write(data)
            await sink.drain()
        if not sink.transport.is_closing() and sink.can_write_eof():
            sink.write_eof()
    except OSError:
        abort()


async def run_inside(settings: SandboxSettings, *, stderr: TextIO | None = None) -> int:
    """The process inside the namespaces: world up, hosts mounted, command run, world down.

    Returns the command's exit status; with a scenario whose expectations fail, 1 when the
    command itself succeeded.
    """
    from harness.world import World

    err = stderr if stderr is not None else sys.stderr
    scenario = _load_scenario(settings.scenario)
    enter_network(settings)
    config, notes = world_config(settings, scenario)
    for note in notes:
        _say(err, f"note: {note}")
    async with World(config) as world:
        if settings.log_events:
            from harness.cli import format_event  # lazily: harness.cli mounts this module

            def log(event: Event) -> None:
                _say(err, format_event(event), prefix=False)

            for event in world.recorder:  # what happened while it started
                log(event)
            world.recorder.listen(log)
        extras = _populate(world, settings, scenario)
        layout = plan_layout(world.routes())
        async with contextlib.AsyncExitStack() as relays:
            for relay in layout.relays:
                await relays.enter_async_context(LoopbackRelay(relay))
            descriptor_file = _prepare_names(world, layout, extras)
            _say(err, _summary(world, layout))
            env = client_environment(
                os.environ, descriptor_file=descriptor_file, ca_file=world.pki.ca_file
            )
            # Only the program's name: arguments may carry secrets.
            program = Path(settings.command[0]).name
            world.recorder.record("sandbox.command", program=program, hosts=dict(layout.hosts))
            status = await _run_command(settings.command, env, err)
            world.recorder.record("sandbox.exit", program=program, status=status)
        failed = _judge(scenario, world.recorder.events, err)
    _say(err, f"{settings.command[0]} exited with {status}; events in {world.events_file}")
    if failed and status == 0:
        return 1
    return status


def _prepare_names(world: World, layout: Layout, extras: Mapping[str, Any]) -> Path:
    """Mount the private hosts file and write the descriptor; returns the descriptor's path."""
    original = ""
    with contextlib.suppress(OSError):
        original = Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
    hosts_path = world.state_dir / "hosts"
    mount_private(hosts_file_text(layout.hosts, original), hosts_path, over="/etc/hosts")
    with contextlib.suppress(OSError):
        nsswitch = nsswitch_text(Path(NSSWITCH).read_text(encoding="utf-8", errors="replace"))
        if nsswitch is not None:
            mount_private(nsswitch, world.state_dir / "nsswitch.conf", over=NSSWITCH)
    descriptor = world.descriptor()
    descriptor.update(extras)
    descriptor["sandbox"] = {"hosts": dict(layout.hosts), "hosts_file": str(hosts_path)}
    descriptor_file = world.state_dir / "descriptor.json"
    descriptor_file.write_text(json.dumps(descriptor, indent=1), encoding="utf-8")
    descriptor_file.chmod(0o600)
    return descriptor_file


def _say(err: TextIO, text: str, *, prefix: bool = True) -> None:
    print(f"{_PREFIX}: {text}" if prefix else text, file=err, flush=True)


def _summary(world: World, layout: Layout) -> str:
    gw = world.gateway
    parts = [f"{world.endpoint} → {GATEWAY_ADDRESS} (wss {gw.wss_port}, mqtts {gw.mqtts_port})"]
    by_address: dict[str, list[str]] = {}
    for name, address in layout.hosts.items():
        if name != world.endpoint:
            by_address.setdefault(address, []).append(name)
    for address, names in by_address.items():
        ports = sorted({r.listen_port for r in layout.relays if r.listen_address == address})
        parts.append(f"{', '.join(names)} → {address} ({', '.join(map(str, ports))})")
    return "; ".join(parts) + f"; events in {world.events_file}"


async def _run_command(command: Sequence[str], env: Mapping[str, str], err: TextIO) -> int:
    try:
        process = await asyncio.create_subprocess_exec(*command, env=dict(env))
    except FileNotFoundError:
        _say(err, f"error: command not found: {command[0]}")
        return EXIT_NOT_FOUND
    except PermissionError:
        _say(err, f"error: not executable: {command[0]}")
        return EXIT_NOT_EXECUTABLE
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            if signum == signal.SIGINT:
                # The command has it already (same process group); keep the world up.
                loop.add_signal_handler(signum, _ignore)
            else:
                loop.add_signal_handler(signum, _send, process, signum)
            installed.append(signum)
    try:
        return exit_status(await process.wait())
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _ignore() -> None:
    return None


def _send(process: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


# The world: serve's options, or a scenario's world (what the sandbox can apply of it)


def _load_scenario(path: Path | None) -> Scenario | None:
    if path is None:
        return None
    from harness.scenario import load_scenario

    return load_scenario(path)


def world_config(
    settings: SandboxSettings, scenario: Scenario | None = None
) -> tuple[WorldConfig, list[str]]:
    """The world the sandbox starts, and notes on what of the scenario it leaves out.

    The scenario's world is the base, the command-line options override it, and the
    gateway always listens on :data:`GATEWAY_ADDRESS` at 443 and 8883.
    """
    from harness.gateway import GatewayConfig
    from harness.world import WorldConfig

    notes: list[str] = []
    gateway = GatewayConfig()
    cognito = True
    newcomer_defaults = True
    dyson = None
    if scenario is not None:
        spec = scenario.world
        gateway = spec.gateway.gateway_config()
        cognito = spec.cognito.enabled
        newcomer_defaults = spec.newcomer_defaults
        dyson = _scenario_dyson(scenario, notes)
        notes.extend(_scenario_left_out(scenario))
    overrides = {
        name: getattr(settings, name)
        for name in ("region", "endpoint_prefix", "account_id", "sni")
        if getattr(settings, name) is not None
    }
    if settings.engine is not None:
        overrides["engine"] = None if settings.engine == "amqtt" else settings.engine
    gateway = dataclasses.replace(
        gateway, host=GATEWAY_ADDRESS, wss_port=HTTPS_PORT, mqtts_port=MQTTS_PORT, **overrides
    )
    if settings.devices is not None:
        from simulators.dyson.world import DysonConfig, parse_device_list

        dyson = DysonConfig(devices=parse_device_list(settings.devices))
    config = WorldConfig(
        gateway=gateway,
        state_dir=settings.state_dir,
        events_file=settings.events_file,
        cognito=cognito,
        credential_lifetime=settings.credential_lifetime or 3600.0,
        newcomer_defaults=newcomer_defaults,
        dyson=dyson,
    )
    return config, notes


def _scenario_dyson(scenario: Scenario, notes: list[str]) -> Any:
    spec = scenario.world.dyson
    if spec is None or not spec.cloud.enabled:
        return None
    from harness.scenario.model import DysonCloudSpec
    from simulators.dyson.world import DysonConfig, DysonDeviceSpec, Mode

    if dataclasses.replace(spec.cloud, enabled=True) != DysonCloudSpec():
        notes.append("the scenario's Dyson cloud settings are not applied (defaults used)")
    devices = []
    for device in spec.devices:
        if not (device.local or device.cloud):
            notes.append(f"device {device.serial}: neither local nor cloud, left out")
            continue
        if device.quirks or device.manifest or device.root_topic or device.env_with_state:
            notes.append(f"device {device.serial}: quirks and manifest changes are not applied")
        mode: Mode = (
            "both" if device.local and device.cloud else "local" if device.local else "cloud"
        )
        devices.append(
            DysonDeviceSpec(product_type=device.product_type, serial=device.serial, mode=mode)
        )
    return DysonConfig(devices=tuple(devices))


def _scenario_left_out(scenario: Scenario) -> list[str]:
    """What the sandbox does not apply of a scenario (a scenario runner does)."""
    spec = scenario.world
    notes = []
    if scenario.clients:
        notes.append("the scenario's clients are not run: the command is the client")
    if scenario.faults:
        notes.append("the scenario's faults are not applied in the sandbox")
    if spec.authorizers:
        notes.append("the scenario's custom authorizers are not registered in the sandbox")
    if spec.gateway.certificate != "good" or spec.cognito.certificate != "good":
        notes.append("the scenario's certificate choices are not applied (good ones served)")
    return notes


def _populate(world: World, settings: SandboxSettings, scenario: Scenario | None) -> dict[str, Any]:
    """Things (``--thing`` and the scenario's), the scenario's pools and clock offset;
    returns the descriptor's extra sections (``things``, ``identity_pools``)."""
    things: list[dict[str, str]] = []

    def add_thing(name: str, policies: tuple[str, ...]) -> None:
        cert = world.pki.client_cert(name)
        world.gateway.register_thing(name, cert.cert_pem, policies=policies)
        things.append(
            {
                "name": name,
                "cert_file": str(cert.cert_file),
                "key_file": str(cert.key_file),
                "certificate_id": cert.fingerprint,
            }
        )

    for name in settings.things:
        add_thing(name, (world.default_policy,))
    pools: list[dict[str, str]] = []
    if scenario is not None:
        spec = scenario.world
        if spec.clock_offset:
            world.clock.shift(spec.clock_offset)
        for thing in spec.things:
            if thing.name not in settings.things and thing.certificate == "good":
                add_thing(thing.name, thing.policies)
        if world.cognito is not None:
            from harness.cognito import IdentityPool

            for p in spec.identity_pools:
                pool = world.cognito.add_pool(
                    IdentityPool(
                        pool_id=p.pool_id or f"{world.region}:{uuid.uuid4()}",
                        allow_unauthenticated=p.allow_unauthenticated,
                        credential_lifetime=p.credential_lifetime,
                        policies=p.policies,
                        rate_limit=p.rate_limit,
                        login_providers=frozenset(p.login_providers),
                    )
                )
                pools.append({"name": p.name, "identity_pool_id": pool.pool_id})
    extras: dict[str, Any] = {"things": things}
    if pools:
        extras["identity_pools"] = pools
    return extras


def _judge(scenario: Scenario | None, events: Sequence[Event], err: TextIO) -> bool:
    """Print the scenario's expectation verdicts; True when any failed."""
    if scenario is None or not scenario.expectations:
        return False
    from harness.scenario import evaluate

    results = evaluate(scenario.expectations, events)
    for result in results:
        _say(err, str(result))
    return not all(r.ok for r in results)


# python -m harness.sandbox SETTINGS.json: the inner process (launch() starts it)


def inside_main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    err = stderr if stderr is not None else sys.stderr
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        _say(err, "error: usage: python -m harness.sandbox SETTINGS.json (see launch())")
        return EXIT_USAGE
    try:
        settings = SandboxSettings.from_json(Path(args[0]).read_text(encoding="utf-8"))
        return asyncio.run(run_inside(settings, stderr=err))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except (ConfigError, OSError) as exc:
        prefix = "cannot start: " if isinstance(exc, OSError) else ""
        _say(err, f"error: {prefix}{exc}")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(inside_main())
