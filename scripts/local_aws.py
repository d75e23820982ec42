#!/usr/bin/env python3
"""Run a local AWS stack on 127.0.0.1 for tests and demos, without Docker.

Two servers stand in for AWS:

* kinesis-mock (npm package ``kinesis-local``) for Kinesis. The KCL daemon needs its
  h2c and CBOR support. The script installs the package itself into ``.local-aws/node/``.
  kinesis-mock has no bind option, so a small ``node -r`` preload makes it listen on
  127.0.0.1 only.
* moto server for DynamoDB (the lease table and its GSI), STS and CloudWatch. It runs
  with the Python that runs this script, which must have ``moto[server]`` installed.

Command line (logs go to stderr, the ``export`` lines to stdout)::

    eval "$(python scripts/local_aws.py start)"  # [--state-dir DIR] [--kinesis-port N]
                                                  # [--moto-port N] [--timeout S]
    python scripts/local_aws.py env               # print the export lines again
    python scripts/local_aws.py stop              # SIGTERM, then SIGKILL after 5 s

From Python, for example in a pytest fixture::

    with LocalAWS(state_dir=tmp_path) as aws:
        os.environ.update(aws.env())

The servers run in their own session, so a Ctrl-C to the caller does not reach them, and
they log to files in the state directory. ``<state-dir>/stack.json`` records their PIDs
and start times; ``stop`` signals a PID only while it still belongs to the process that
was started, so a recycled PID is never killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import http.client
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

LOG = logging.getLogger("local_aws")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NODE_DIR = REPO_ROOT / ".local-aws" / "node"
DEFAULT_STATE_DIR = REPO_ROOT / ".local-aws" / "state"
STATE_FILE_NAME = "stack.json"
STATE_VERSION = 1

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto's default account. kinesis-mock is told to use it too, so that stream ARNs and
# STS identities name the same account.
ACCOUNT_ID = "123456789012"

KINESIS_MOCK_PACKAGE = "kinesis-local"
KINESIS_MOCK_VERSION = "0.6.2"
KINESIS_MOCK_INTEGRITY = (
    "sha512-mFlmksPMQP/A3nT22N2E8WzUbJcbEdxkCnhNCx2lHj20CW4vzuVH8zn5ByRg5LS5es8tvnx2mY1DpbZ5kw9PPQ=="
)
_FAST = "10ms"
KINESIS_MOCK_SETTINGS: Mapping[str, str] = {
    "CREATE_STREAM_DURATION": _FAST,
    "DELETE_STREAM_DURATION": _FAST,
    "SPLIT_SHARD_DURATION": _FAST,
    "MERGE_SHARDS_DURATION": _FAST,
    "UPDATE_SHARD_COUNT_DURATION": _FAST,
    "REGISTER_STREAM_CONSUMER_DURATION": _FAST,
    "DEREGISTER_STREAM_CONSUMER_DURATION": _FAST,
    "SHARD_LIMIT": "2000",
    "LOG_LEVEL": "WARN",
    "AWS_REGION": REGION,
    "AWS_ACCOUNT_ID": ACCOUNT_ID,
}

# Preloaded into kinesis-mock: every listen(port, ...) binds 127.0.0.1 instead of all interfaces.
BIND_LOOPBACK_JS = """\
'use strict';
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const host = '127.0.0.1';
  if (typeof args[0] === 'number') args.splice(1, typeof args[1] === 'string' ? 1 : 0, host);
  else if (args[0] instanceof Object && 'port' in args[0]) args[0] = { ...args[0], host };
  return listen.apply(this, args);
};
"""

DEFAULT_START_TIMEOUT = 60.0
TERM_GRACE_SECONDS = 5.0
KILL_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.05
LOG_TAIL_LINES = 25
PIP_HINT = 'pip install "moto[server]"'


class LocalAWSError(Exception):
    """The local stack cannot be started, found or stopped; the message says why."""


@dataclasses.dataclass(frozen=True)
class ServiceProcess:
    """One server of the stack, as recorded in the state file."""

    name: str
    pid: int
    port: int
    log_path: str
    start_marker: str
    """The process's start time (``/proc/PID/stat`` field 22); with the PID it names one process."""
    argv: tuple[str, ...]

    def is_running(self) -> bool:
        """Whether the recorded process is alive: not exited, not a zombie, its PID not reused."""
        return _start_marker(self.pid) == self.start_marker

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the PID still belongs to the recorded process; otherwise do nothing."""
        if not self.is_running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def log_tail(self) -> str:
        return _tail(Path(self.log_path))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceProcess:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            port=int(data["port"]),
            log_path=str(data["log_path"]),
            start_marker=str(data["start_marker"]),
            argv=tuple(str(arg) for arg in data["argv"]),
        )


@dataclasses.dataclass(frozen=True)
class StackState:
    """What ``<state-dir>/stack.json`` holds."""

    kinesis: ServiceProcess
    kinesis_tls_port: int
    moto: ServiceProcess
    started_at: str

    @property
    def services(self) -> tuple[ServiceProcess, ServiceProcess]:
        return (self.kinesis, self.moto)

    def env(self) -> dict[str, str]:
        """The environment a client needs to use this stack."""
        moto_url = f"http://{HOST}:{self.moto.port}"
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "THYME_KINESIS_ENDPOINT_URL": f"http://{HOST}:{self.kinesis.port}",
            "THYME_DYNAMODB_ENDPOINT_URL": moto_url,
            "THYME_STS_ENDPOINT_URL": moto_url,
            "THYME_CLOUDWATCH_ENDPOINT_URL": moto_url,
            # the AWS SDKs' own variables, so `aws` and boto3 reach the same stack unchanged
            "AWS_ENDPOINT_URL_KINESIS": f"http://{HOST}:{self.kinesis.port}",
            "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
            "AWS_ENDPOINT_URL_STS": moto_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH": moto_url,
        }

    def write(self, path: Path) -> None:
        data = {"version": STATE_VERSION, **dataclasses.asdict(self)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        if data.get("version") != STATE_VERSION:
            msg = f"unsupported version {data.get('version')!r}"
            raise ValueError(msg)
        return cls(
            kinesis=ServiceProcess.from_json(data["kinesis"]),
            kinesis_tls_port=int(data["kinesis_tls_port"]),
            moto=ServiceProcess.from_json(data["moto"]),
            started_at=str(data["started_at"]),
        )

    @classmethod
    def read(cls, path: Path) -> StackState:
        """The state in ``path``: FileNotFoundError if none, LocalAWSError if unreadable."""
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = f"cannot read the stack state {path}: {exc}; remove it if no stack is running"
            raise LocalAWSError(msg) from exc


class LocalAWS:
    """A local AWS stack (kinesis-mock + moto) whose state lives in ``state_dir``.

    ``start()`` returns once both servers answer; ``stop()`` stops them and removes the
    state file. As a context manager it starts on enter and stops on exit. A stack started
    elsewhere (for example by the command line) can be attached with ``LocalAWS.attach``.
    """

    def __init__(
        self,
        state_dir: Path | str = DEFAULT_STATE_DIR,
        *,
        kinesis_port: int | None = None,
        moto_port: int | None = None,
        node_dir: Path | str = DEFAULT_NODE_DIR,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.node_dir = Path(node_dir).resolve()
        self.kinesis_port = kinesis_port
        self.moto_port = moto_port
        self.start_timeout = start_timeout
        self._state: StackState | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE_NAME

    @classmethod
    def attach(cls, state_dir: Path | str = DEFAULT_STATE_DIR) -> LocalAWS:
        """The stack recorded in ``state_dir``; raises ``LocalAWSError`` if none is running."""
        stack = cls(state_dir)
        state = stack._read_state()
        if state is None:
            msg = f"no local AWS stack is recorded in {stack.state_dir}; run 'start' first"
            raise LocalAWSError(msg)
        dead = [s for s in state.services if not s.is_running()]
        if dead:
            names = ", ".join(f"{s.name} (pid {s.pid})" for s in dead)
            msg = f"the stack in {stack.state_dir} is not running ({names} exited); restart it"
            raise LocalAWSError(msg)
        stack._state = state
        return stack

    @property
    def state(self) -> StackState:
        if self._state is None:
            msg = "the local AWS stack is not started"
            raise LocalAWSError(msg)
        return self._state

    def env(self) -> dict[str, str]:
        """``AWS_*`` credentials/region and the ``THYME_*_ENDPOINT_URL`` of each service."""
        return self.state.env()

    def start(self) -> None:
        """Start kinesis-mock and moto and wait until both answer (``start_timeout`` seconds)."""
        began = time.monotonic()
        moto_python = _check_moto_server()
        node = _require_tool("node")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        previous = self._read_state()
        if previous is not None:
            running = [s for s in previous.services if s.is_running()]
            if running:
                pids = ", ".join(f"{s.name} pid {s.pid}" for s in running)
                msg = f"a local AWS stack already runs from {self.state_dir} ({pids}); stop it first"
                raise LocalAWSError(msg)
            LOG.info("replacing the state of a stack that is no longer running")
        package_dir = ensure_kinesis_mock(self.node_dir)

        kinesis_port, tls_port, moto_port = _choose_ports(self.kinesis_port, None, self.moto_port)
        preload = self.state_dir / "bind-loopback.js"
        preload.write_text(BIND_LOOPBACK_JS)
        kinesis_env = {
            **os.environ,
            **KINESIS_MOCK_SETTINGS,
            "KINESIS_MOCK_CERT_PATH": str(package_dir / "server.json"),
            "KINESIS_MOCK_PLAIN_PORT": str(kinesis_port),
            "KINESIS_MOCK_TLS_PORT": str(tls_port),
        }
        # No MOTO_ACCOUNT_ID: it would pin every call to one account whatever credentials sign
        # it, and the e2e tests check that an assumed role's calls land in the role's account
        # (moto's default account is already ACCOUNT_ID).
        moto_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            kinesis = self._spawn(
                "kinesis-mock",
                [node, "-r", str(preload), str(package_dir / "main.js")],
                kinesis_env,
                kinesis_port,
            )
            moto = self._spawn(
                "moto",
                [moto_python, "-m", "moto.server", "-H", HOST, "-p", str(moto_port)],
                moto_env,
                moto_port,
            )
            state = StackState(
                kinesis=kinesis,
                kinesis_tls_port=tls_port,
                moto=moto,
                started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            )
            # Written before waiting, so that 'stop' finds the servers if this process dies now.
            state.write(self.state_file)
            self._state = state
            self._wait_until_ready(state)
        except BaseException:
            self._stop_spawned()
            raise
        LOG.info(
            "ready in %.1f s: kinesis-mock on %s:%d (pid %d), moto on %s:%d (pid %d)",
            time.monotonic() - began,
            HOST,
            kinesis_port,
            kinesis.pid,
            HOST,
            moto_port,
            moto.pid,
        )

    def stop(self) -> None:
        """Stop both servers (SIGTERM, SIGKILL after 5 s) and remove the state file."""
        state = self._state or self._read_state()
        if state is None:
            LOG.info("no local AWS stack is recorded in %s; nothing to stop", self.state_dir)
            return
        began = time.monotonic()
        _terminate(list(state.services))
        for child in self._children:
            child.wait(timeout=KILL_WAIT_SECONDS)  # reap our own children
        self._children.clear()
        self.state_file.unlink(missing_ok=True)
        self._state = None
        LOG.info("local AWS stack stopped in %.1f s", time.monotonic() - began)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _read_state(self) -> StackState | None:
        try:
            return StackState.read(self.state_file)
        except FileNotFoundError:
            return None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], port: int) -> ServiceProcess:
        log_path = self.state_dir / f"{name}.log"
        with log_path.open("wb") as log:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=env,
                start_new_session=True,
            )
        self._children.append(child)
        marker = _start_marker(child.pid)
        if marker is None:
            child.wait()
            msg = f"{name} exited at once with code {child.returncode}\n{_tail(log_path)}"
            raise LocalAWSError(msg)
        LOG.info("started %s (pid %d), log %s", name, child.pid, log_path)
        return ServiceProcess(name, child.pid, port, str(log_path), marker, tuple(argv))

    def _wait_until_ready(self, state: StackState) -> None:
        probes = {
            state.kinesis.name: (state.kinesis, _kinesis_answers),
            state.moto.name: (state.moto, _moto_answers),
        }
        deadline = time.monotonic() + self.start_timeout
        while probes:
            for name, (service, probe) in list(probes.items()):
                if not service.is_running():
                    tail = service.log_tail()
                    msg = f"{name} exited before it was ready\n{tail}"
                    if "ModuleNotFoundError" in tail:
                        msg += f"\nmoto server is incomplete in {sys.executable}: {PIP_HINT}"
                    raise LocalAWSError(msg)
                if probe(service.port):
                    del probes[name]
            if probes and time.monotonic() > deadline:
                tails = "\n".join(service.log_tail() for service, _ in probes.values())
                msg = f"{', '.join(probes)} did not answer within {self.start_timeout:g} s\n{tails}"
                raise LocalAWSError(msg)
            time.sleep(POLL_SECONDS)

    def _stop_spawned(self) -> None:
        """Clean up after a failed start: stop what this object spawned."""
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()
        self._children.clear()
        self.state_file.unlink(missing_ok=True)
        self._state = None


def ensure_kinesis_mock(node_dir: Path) -> Path:
    """Install the pinned kinesis-mock into ``node_dir`` unless it is there; return its package dir.

    A lock file written here pins the tarball's integrity and ``npm ci`` installs it. A file
    lock keeps parallel test workers from installing at the same time.
    """
    package_dir = node_dir / "node_modules" / KINESIS_MOCK_PACKAGE
    if _installed_version(package_dir) == KINESIS_MOCK_VERSION:
        return package_dir
    npm = _require_tool("npm")
    node_dir.mkdir(parents=True, exist_ok=True)
    with (node_dir / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(package_dir) == KINESIS_MOCK_VERSION:
            return package_dir
        LOG.info("installing %s@%s into %s", KINESIS_MOCK_PACKAGE, KINESIS_MOCK_VERSION, node_dir)
        manifest = {
            "name": "thyme-local-aws",
            "private": True,
            "dependencies": {KINESIS_MOCK_PACKAGE: KINESIS_MOCK_VERSION},
        }
        lockfile = {
            "name": "thyme-local-aws",
            "lockfileVersion": 3,
            "requires": True,
            "packages": {
                "": {"name": "thyme-local-aws", "dependencies": manifest["dependencies"]},
                f"node_modules/{KINESIS_MOCK_PACKAGE}": {
                    "version": KINESIS_MOCK_VERSION,
                    "integrity": KINESIS_MOCK_INTEGRITY,
                    "license": "MIT",
                    "bin": {KINESIS_MOCK_PACKAGE: "main.js"},
                },
            },
        }
        (node_dir / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (node_dir / "package-lock.json").write_text(json.dumps(lockfile, indent=2) + "\n")
        argv = [npm, "ci", "--prefix", str(node_dir), "--ignore-scripts", "--no-audit", "--no-fund"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0 or _installed_version(package_dir) != KINESIS_MOCK_VERSION:
            output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
            msg = f"{shlex.join(argv)} failed with code {result.returncode}:\n" + "\n".join(output)
            raise LocalAWSError(msg)
    return package_dir


def _installed_version(package_dir: Path) -> str | None:
    try:
        version = json.loads((package_dir / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (package_dir / "main.js").is_file():
        return None
    return str(version)


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not on PATH; kinesis-mock needs Node.js (with npm)"
        raise LocalAWSError(msg)
    return path


def _check_moto_server() -> str:
    """The Python that will run moto server, once its ``server`` extra is known to be installed.

    The distributions are looked up rather than imported: importing moto takes about a second.
    """
    for dist in ("moto", "flask", "flask-cors"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            msg = f"moto server is not installed in {sys.executable}: {PIP_HINT}"
            raise LocalAWSError(msg) from None
    return sys.executable


def _choose_ports(*wanted: int | None) -> list[int]:
    """The wanted ports after checking they are free on 127.0.0.1; free ones where None."""
    with contextlib.ExitStack() as stack:
        ports = []
        for port in wanted:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            # As a server would: a TIME_WAIT left by an earlier run does not make a port busy.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port or 0))
            except OSError as exc:
                msg = f"port {port} on {HOST} is not free: {exc.strerror}"
                raise LocalAWSError(msg) from exc
            ports.append(int(sock.getsockname()[1]))
        return ports


_HAS_PROCFS = Path("/proc/self/stat").exists()


def _start_marker(pid: int) -> str | None:
    """When process ``pid`` started, as a string; None if it has exited or is a zombie.

    A PID together with its start time names one process for good: a recycled PID has a
    different start time.
    """
    if _HAS_PROCFS:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after "(comm)": state is field 3, starttime field 22.
        state, *rest = stat[stat.rindex(")") + 2 :].split()
        return None if state in ("Z", "X") else rest[18]
    result = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True, check=False)
    state, _, started = result.stdout.strip().partition(" ")
    if result.returncode != 0 or not started or state.startswith("Z"):
        return None
    return started.strip()


def _terminate(services: list[ServiceProcess]) -> None:
    """SIGTERM, wait up to 5 s, then SIGKILL; only processes that are still the recorded ones."""
    running = [s for s in services if s.is_running()]
    for service in services:
        if service not in running:
            LOG.info("%s (pid %d) is no longer running; not signalling it", service.name, service.pid)
    for service in running:
        LOG.info("stopping %s (pid %d)", service.name, service.pid)
        service.send(signal.SIGTERM)
    running = _wait_for_exit(running, TERM_GRACE_SECONDS)
    for service in running:
        # kinesis-mock waits for clients' keep-alive connections to close after SIGTERM, which a
        # stopped consumer's JVM may never do: expected, and harmless for an emulator that keeps
        # nothing on disk, so said as such (a warning for any other server).
        LOG.log(
            logging.INFO if service.name == "kinesis-mock" else logging.WARNING,
            "%s (pid %d) still running %.0f s after SIGTERM (%s); stopping it with SIGKILL",
            service.name,
            service.pid,
            TERM_GRACE_SECONDS,
            "it waits for open keep-alive connections" if service.name == "kinesis-mock" else "unexpected",
        )
        service.send(signal.SIGKILL)
    running = _wait_for_exit(running, KILL_WAIT_SECONDS)
    if running:
        names = ", ".join(f"{s.name} (pid {s.pid})" for s in running)
        msg = f"still running after SIGKILL: {names}"
        raise LocalAWSError(msg)


def _wait_for_exit(services: list[ServiceProcess], seconds: float) -> list[ServiceProcess]:
    deadline = time.monotonic() + seconds
    running = services
    while running and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        running = [s for s in running if s.is_running()]
    return running


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    tail = text.splitlines()[-lines:]
    body = "\n".join(f"  | {line}" for line in tail) if tail else "  | (empty)"
    return f"last lines of {path}:\n{body}"


def _post_json(port: int, target: str, content_type: str, service: str) -> bool:
    """Whether an empty JSON-protocol call answers 200.

    Neither server checks signatures, but kinesis-mock wants an Authorization header with
    a credential scope, and a date.
    """
    now = dt.datetime.now(dt.UTC)
    scope = f"{now:%Y%m%d}/{REGION}/{service}/aws4_request"
    headers = {
        "Content-Type": content_type,
        "X-Amz-Target": target,
        "X-Amz-Date": f"{now:%Y%m%dT%H%M%SZ}",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=test/{scope}, SignedHeaders=host;x-amz-date, Signature=0",
    }
    connection = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        connection.request("POST", "/", body=b"{}", headers=headers)
        return connection.getresponse().status == HTTPStatus.OK
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _kinesis_answers(port: int) -> bool:
    return _post_json(port, "Kinesis_20131202.ListStreams", "application/x-amz-json-1.1", "kinesis")


def _moto_answers(port: int) -> bool:
    return _post_json(port, "DynamoDB_20120810.ListTables", "application/x-amz-json-1.0", "dynamodb")


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start kinesis-mock and moto, print export lines")
    env = commands.add_parser("env", help="print the export lines of the running stack")
    stop = commands.add_parser("stop", help="stop the stack")
    for command in (start, env, stop):
        command.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_STATE_DIR,
            help=f"default: {DEFAULT_STATE_DIR}",
        )
    start.add_argument("--kinesis-port", type=int, help="kinesis-mock plain HTTP port (default: a free one)")
    start.add_argument("--moto-port", type=int, help="moto server port (default: a free one)")
    start.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds to wait until both answer",
    )
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> dict[str, str] | None:
    """Carry out the command; the environment to print, if the command prints one."""
    if args.command == "start":
        stack = LocalAWS(
            args.state_dir,
            kinesis_port=args.kinesis_port,
            moto_port=args.moto_port,
            start_timeout=args.timeout,
        )
        stack.start()
        return stack.env()
    if args.command == "env":
        return LocalAWS.attach(args.state_dir).env()
    LocalAWS(args.state_dir).stop()
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="local_aws: %(message)s", stream=sys.stderr)
    try:
        env = _run(args)
    except LocalAWSError as exc:
        LOG.error("%s", exc)
        return 1
    if env is not None:
        sys.stdout.write(_exports(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
