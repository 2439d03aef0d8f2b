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
* Every part of the world listens itself on its own loopback address at the well-known
  port of its name (a fresh namespace answers all of 127/8, and several names want 443):
  the gateway on ``127.0.0.1`` (443: WSS, ALPN ``mqtt``; 8883: MQTT over TLS), Cognito on
  ``127.0.0.2:443``, the Dyson API hosts on ``127.0.0.3:443`` and each device's local
  broker (``<serial>.local``) on ``127.0.0.4:1883`` onwards (the world's ``cognito_host``,
  ``api_host`` and ``local_host`` hooks). Nothing stands in between, so a client's SYN,
  a refused connection or a reset is the world's own (a device's ``syn_fragile`` quirk
  included), and TLS runs end to end with the real name as SNI and the world's
  certificate. :func:`plan_hosts` checks that every name of :meth:`World.routes` is served
  that way and maps it to its address.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from harness.errors import ConfigError
from harness.events import Event
from harness.resolver import Route

if TYPE_CHECKING:
    from harness.scenario import Scenario
    from harness.world import World, WorldConfig
    from simulators.dyson.world import DysonConfig

__all__ = [
    "CA_ENVIRONMENT",
    "COGNITO_ADDRESS",
    "DESCRIPTOR_ENVIRONMENT",
    "DYSON_API_ADDRESS",
    "FIRST_DEVICE_ADDRESS",
    "GATEWAY_ADDRESS",
    "SandboxSettings",
    "SandboxUnavailable",
    "check_environment",
    "client_environment",
    "hosts_file_text",
    "launch",
    "nsswitch_text",
    "plan_hosts",
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
#: The sandbox's addresses: each part of the world binds its well-known port on its own.
GATEWAY_ADDRESS = "127.0.0.1"
COGNITO_ADDRESS = "127.0.0.2"
DYSON_API_ADDRESS = "127.0.0.3"
#: The first device's local broker; the next ones count up from here.
FIRST_DEVICE_ADDRESS = "127.0.0.4"
#: glibc's name-service switch; mounted over privately only if it asks files too late.
NSSWITCH = "/etc/nsswitch.conf"
#: AWS's well-known ports (aws-iot.md §3).
HTTPS_PORT = 443
MQTTS_PORT = 8883
#: The port clients hard-code for a Dyson device's local broker (dyson.md §1.1).
LOCAL_MQTT_PORT = 1883
#: Exit codes of a command that cannot be started, as shells use them.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
#: Exit code of harness misuse and environment problems (as harness.cli).
EXIT_USAGE = 2
#: The probe ``launch`` runs under ``unshare`` before anything else; seconds allowed.
PROBE = "mount --make-rprivate / && ip link set lo up"
PROBE_TIMEOUT = 30.0
#: Seconds the sandbox waits for the devices' cloud links before it runs the command.
CLOUD_LINK_WAIT = 10.0
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


# Addresses and the hosts file (pure)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def plan_hosts(routes: Mapping[str, Route]) -> dict[str, str]:
    """Each routed name → the loopback address the world serves it on, for the hosts file.

    The sandbox's world binds every name's well-known ports itself (:func:`world_config`),
    so each route must be on a loopback address with every well-known port bound as it
    is (443 → 443); anything else is a :class:`ConfigError` naming the route, because
    nothing in the sandbox would carry a client from the well-known port to another one.
    """
    hosts: dict[str, str] = {}
    for name, route in routes.items():
        moved = {known: bound for known, bound in route.ports.items() if known != bound}
        if not _is_loopback(route.address) or moved:
            ports = ", ".join(f"port {bound} for {known}" for known, bound in moved.items())
            raise ConfigError(
                f"{name} is served on {route.address}"
                + (f" {ports}" if ports else "")
                + ": the sandbox needs each name on a loopback address at its well-known ports"
            )
        hosts[name.rstrip(".").lower()] = route.address
    return hosts


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
        await _devices_online(world, err)
        routes = world.routes()
        hosts = plan_hosts(routes)
        descriptor_file = _prepare_names(world, hosts, extras)
        _say(err, _summary(world, routes))
        env = client_environment(
            os.environ, descriptor_file=descriptor_file, ca_file=world.pki.ca_file
        )
        # Only the program's name: arguments may carry secrets.
        program = Path(settings.command[0]).name
        world.recorder.record("sandbox.command", program=program, hosts=hosts)
        status = await _run_command(settings.command, env, err)
        world.recorder.record("sandbox.exit", program=program, status=status)
        failed = _judge(scenario, world.recorder.events, err)
    _say(err, f"{settings.command[0]} exited with {status}; events in {world.events_file}")
    if failed and status == 0:
        return 1
    return status


async def _devices_online(world: World, err: TextIO) -> None:
    """Wait until each device's cloud link is online (or it has had
    :data:`CLOUD_LINK_WAIT` seconds): a client that starts at once finds its devices in
    the cloud, as a real app does, and the world never stops half-way through a link's
    connect."""
    if world.dyson is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOUD_LINK_WAIT
    for device in world.dyson:
        if device.cloud is None:
            continue
        try:
            await device.cloud.wait_connected(max(deadline - loop.time(), 0.001))
        except TimeoutError:
            _say(err, f"note: device {device.serial} is not online in the cloud yet")


def _prepare_names(world: World, hosts: Mapping[str, str], extras: Mapping[str, Any]) -> Path:
    """Mount the private hosts file and write the descriptor; returns the descriptor's path."""
    original = ""
    with contextlib.suppress(OSError):
        original = Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
    hosts_path = world.state_dir / "hosts"
    mount_private(hosts_file_text(hosts, original), hosts_path, over="/etc/hosts")
    with contextlib.suppress(OSError):
        nsswitch = nsswitch_text(Path(NSSWITCH).read_text(encoding="utf-8", errors="replace"))
        if nsswitch is not None:
            mount_private(nsswitch, world.state_dir / "nsswitch.conf", over=NSSWITCH)
    descriptor = world.descriptor()
    descriptor.update(extras)
    descriptor["sandbox"] = {"hosts": dict(hosts), "hosts_file": str(hosts_path)}
    descriptor_file = world.state_dir / "descriptor.json"
    descriptor_file.write_text(json.dumps(descriptor, indent=1), encoding="utf-8")
    descriptor_file.chmod(0o600)
    return descriptor_file


def _say(err: TextIO, text: str, *, prefix: bool = True) -> None:
    print(f"{_PREFIX}: {text}" if prefix else text, file=err, flush=True)


def _summary(world: World, routes: Mapping[str, Route]) -> str:
    gw = world.gateway
    parts = [f"{world.endpoint} → {GATEWAY_ADDRESS} (wss {gw.wss_port}, mqtts {gw.mqtts_port})"]
    by_address: dict[str, tuple[list[str], set[int]]] = {}
    for name, route in routes.items():
        if name != world.endpoint:
            names, ports = by_address.setdefault(route.address, ([], set()))
            names.append(name)
            ports.update(route.ports)
    for address, (names, ports) in by_address.items():
        listed = ", ".join(map(str, sorted(ports)))
        parts.append(f"{', '.join(names)} → {address} ({listed})")
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

    The scenario's world is the base, the command-line options override it, and every
    part listens on its own address at its well-known ports: the gateway on
    :data:`GATEWAY_ADDRESS` (443, 8883), Cognito on :data:`COGNITO_ADDRESS` (443), the
    Dyson API on :data:`DYSON_API_ADDRESS` (443) and the local brokers from
    :data:`FIRST_DEVICE_ADDRESS` (1883).
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
        cognito_host=COGNITO_ADDRESS,
        cognito_port=HTTPS_PORT,
        credential_lifetime=settings.credential_lifetime or 3600.0,
        newcomer_defaults=newcomer_defaults,
        dyson=_placed(dyson, notes) if dyson is not None else None,
    )
    return config, notes


def _placed(dyson: DysonConfig, notes: list[str]) -> DysonConfig:
    """``dyson`` with the API on :data:`DYSON_API_ADDRESS`:443 and each local broker on an
    address of its own, from :data:`FIRST_DEVICE_ADDRESS`, at 1883 (dyson.md §1.1, §6)."""
    next_address = ipaddress.ip_address(FIRST_DEVICE_ADDRESS)
    devices = []
    for device in dyson.devices:
        if device.mode == "cloud":  # no local broker
            devices.append(device)
            continue
        if device.local_port not in (0, LOCAL_MQTT_PORT):
            notes.append(
                f"device {device.serial or device.product_type}: its local broker listens on "
                f"{LOCAL_MQTT_PORT} in the sandbox, not on {device.local_port}"
            )
        devices.append(
            dataclasses.replace(device, local_host=str(next_address), local_port=LOCAL_MQTT_PORT)
        )
        next_address += 1
    return dataclasses.replace(
        dyson, api_host=DYSON_API_ADDRESS, api_port=HTTPS_PORT, devices=tuple(devices)
    )


def _scenario_dyson(scenario: Scenario, notes: list[str]) -> DysonConfig | None:
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
