#!/usr/bin/env python3
"""Run a local AWS stack on 127.0.0.1 for tests and demos, without Docker.

Two engines; both print the same variables (``env``), so every command and test runs on either.

``kinesis-mock`` (the default): two servers stand in for AWS:

* kinesis-mock (npm package ``kinesis-local``) for Kinesis. The KCL daemon needs its
  h2c and CBOR support. The script installs the package itself into ``.local-aws/node/``.
  kinesis-mock has no bind option, so a small ``node -r`` preload makes it listen on
  127.0.0.1 only.
* moto server for DynamoDB (the lease table and its GSI), STS and CloudWatch. It runs
  with the Python that runs this script, which must have ``moto[server]`` installed.

``localstack`` (``--engine localstack`` or ``THYME_LOCAL_AWS_ENGINE=localstack``):

* LocalStack (``localstack-core``, pinned in ``scripts/localstack-requirements.txt``) runs on
  the host, from its own virtualenv ``.local-aws/localstack-venv/`` (created on first use, or
  by ``install``), for Kinesis and STS. Its Kinesis is kinesis-mock too, one process per
  account, which LocalStack starts itself; the script installs the version LocalStack asks
  for from the npm registry with a lock file into ``.local-aws/localstack-node/`` first, so
  LocalStack never installs anything. The gateway and kinesis-mock listen on 127.0.0.1 only;
  LocalStack's DNS server is off.
* moto server for DynamoDB and CloudWatch: LocalStack's DynamoDB is DynamoDB Local, which it
  downloads (with a JDK) from hosts that are not package registries.
* ``AWS_ACCESS_KEY_ID`` is the account number (123456789012): LocalStack takes the account
  from a 12-digit access key, so streams have the same ARNs as on the default engine.

Command line (logs go to stderr, the ``export`` lines to stdout)::

    eval "$(python scripts/local_aws.py start)"  # [--engine kinesis-mock|localstack]
                                                  # [--state-dir DIR] [--kinesis-port N]
                                                  # [--moto-port N] [--timeout S]
    python scripts/local_aws.py env               # print the export lines again
    python scripts/local_aws.py stop              # SIGTERM, then SIGKILL after a grace period
    python scripts/local_aws.py install --engine localstack   # install only (scripts/setup.sh)

From Python, for example in a pytest fixture::

    with LocalAWS(state_dir=tmp_path) as aws:
        os.environ.update(aws.env())

The servers run in their own session, so a Ctrl-C to the caller does not reach them, and
they log to files in the state directory. ``<state-dir>/stack.json`` records their PIDs
and start times (with LocalStack, also those of the kinesis-mock processes it started, which
run in sessions of their own); ``stop`` signals a PID only while it still belongs to the
process that was started, so a recycled PID is never killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
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

KINESIS_MOCK_ENGINE = "kinesis-mock"
LOCALSTACK_ENGINE = "localstack"
ENGINES = (KINESIS_MOCK_ENGINE, LOCALSTACK_ENGINE)
ENGINE_ENV = "THYME_LOCAL_AWS_ENGINE"

# LocalStack on the host. 4.9.2 is the newest release that starts on Python 3.11 and serves
# Kinesis there (4.10-4.13 fail on Kinesis calls, 4.14 and 2026.x need Python 3.12); the
# requirements file pins every distribution of its environment.
LOCALSTACK_VERSION = "4.9.2"
LOCALSTACK_REQUIREMENTS = REPO_ROOT / "scripts" / "localstack-requirements.txt"
DEFAULT_LOCALSTACK_VENV = REPO_ROOT / ".local-aws" / "localstack-venv"
DEFAULT_LOCALSTACK_NODE_DIR = REPO_ROOT / ".local-aws" / "localstack-node"
LOCALSTACK_STAMP = ".thyme-localstack"
# The kinesis-mock LocalStack 4.9.2 runs (its KINESIS_MOCK_VERSION default), locked with its one
# dependency; the lock file below is what `npm install --package-lock-only` writes for it.
LOCALSTACK_KINESIS_MOCK_VERSION = "0.4.13"
LOCALSTACK_KINESIS_MOCK_LOCK: Mapping[str, Mapping[str, Any]] = {
    f"node_modules/{KINESIS_MOCK_PACKAGE}": {
        "version": LOCALSTACK_KINESIS_MOCK_VERSION,
        "integrity": (
            "sha512-Fkl4YjDdd2A4nXSxhwodjoAUIQwMPIo1BgcHumMEpPbaX9JcDBUaTbZdcKqq2nW7ZZhf81ZONAwyH5+abyWflQ=="
        ),
        "license": "MIT",
        "dependencies": {"punycode": "2.1.1"},
        "bin": {KINESIS_MOCK_PACKAGE: "main.js"},
    },
    "node_modules/punycode": {
        "version": "2.1.1",
        "integrity": (
            "sha512-XRsRjdf+j5ml+y/6GKHPZbrF/8p2Yga0JPtdqTIY2Xe5ohJPD9saDJJLPvp9+NSBprVvevdXZybnj2cv8OEd0A=="
        ),
        "license": "MIT",
        "engines": {"node": ">=6"},
    },
}
LOCALSTACK_SETTINGS: Mapping[str, str] = {
    "OVERRIDE_IN_DOCKER": "0",  # host mode: every directory under FILESYSTEM_ROOT
    "GATEWAY_SERVER": "hypercorn",  # the default server (twisted) binds all interfaces, whatever GATEWAY_LISTEN says
    "DNS_ADDRESS": "0",  # no DNS server (it would bind port 53 on all interfaces)
    "SKIP_SSL_CERT_DOWNLOAD": "1",  # a self-signed certificate instead of a download
    "DISABLE_EVENTS": "1",  # no analytics
    "SERVICES": "kinesis,sts",
    "EAGER_SERVICE_LOADING": "1",
    "KINESIS_MOCK_PROVIDER_ENGINE": "node",
    "KINESIS_MOCK_VERSION": LOCALSTACK_KINESIS_MOCK_VERSION,
    "KINESIS_LATENCY": "0",  # as docker-compose.yml
    "KINESIS_SHARD_LIMIT": "2000",
    # its state lives under the stack's state directory and is not reloaded: writing it every 5 s is waste
    "KINESIS_PERSISTENCE": "0",
    "KINESIS_MOCK_LOG_LEVEL": "WARN",
    "PYTHONUNBUFFERED": "1",
}
# Only these of the caller's variables reach LocalStack (and the kinesis-mock it starts, which
# needs `node` on PATH): AWS_* or LocalStack's own settings from the caller's shell must not.
LOCALSTACK_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
LOCALSTACK_PROBE_TIMEOUT = 30.0


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
    """What ``<state-dir>/stack.json`` holds.

    ``kinesis`` is the server that answers Kinesis calls: kinesis-mock, or LocalStack (which
    answers STS calls too) with ``engine == "localstack"``; ``spawned`` are the processes that
    LocalStack started (its kinesis-mock, one per account), recorded so that ``stop`` can end
    them by PID even if LocalStack itself has died.
    """

    kinesis: ServiceProcess
    kinesis_tls_port: int
    moto: ServiceProcess
    started_at: str
    engine: str = KINESIS_MOCK_ENGINE
    spawned: tuple[ServiceProcess, ...] = ()

    @property
    def services(self) -> tuple[ServiceProcess, ServiceProcess]:
        return (self.kinesis, self.moto)

    def env(self) -> dict[str, str]:
        """The environment a client needs to use this stack (the same variables on every engine)."""
        moto_url = f"http://{HOST}:{self.moto.port}"
        kinesis_url = f"http://{HOST}:{self.kinesis.port}"
        localstack = self.engine == LOCALSTACK_ENGINE
        sts_url = kinesis_url if localstack else moto_url
        return {
            # LocalStack takes the account from a 12-digit access key (moto keeps its default account)
            "AWS_ACCESS_KEY_ID": ACCOUNT_ID if localstack else "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "THYME_KINESIS_ENDPOINT_URL": kinesis_url,
            "THYME_DYNAMODB_ENDPOINT_URL": moto_url,
            "THYME_STS_ENDPOINT_URL": sts_url,
            "THYME_CLOUDWATCH_ENDPOINT_URL": moto_url,
            # the AWS SDKs' own variables, so `aws` and boto3 reach the same stack unchanged
            "AWS_ENDPOINT_URL_KINESIS": kinesis_url,
            "AWS_ENDPOINT_URL_DYNAMODB": moto_url,
            "AWS_ENDPOINT_URL_STS": sts_url,
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
        engine = str(data.get("engine", KINESIS_MOCK_ENGINE))
        if engine not in ENGINES:
            msg = f"unknown engine {engine!r}"
            raise ValueError(msg)
        return cls(
            kinesis=ServiceProcess.from_json(data["kinesis"]),
            kinesis_tls_port=int(data["kinesis_tls_port"]),
            moto=ServiceProcess.from_json(data["moto"]),
            started_at=str(data["started_at"]),
            engine=engine,
            spawned=tuple(ServiceProcess.from_json(p) for p in data.get("spawned", ())),
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
    """A local AWS stack whose state lives in ``state_dir``: kinesis-mock + moto, or with
    ``engine="localstack"`` LocalStack (Kinesis, STS) + moto (DynamoDB, CloudWatch).

    ``start()`` returns once every server answers; ``stop()`` stops them and removes the
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
        engine: str = KINESIS_MOCK_ENGINE,
        localstack_venv: Path | str = DEFAULT_LOCALSTACK_VENV,
        localstack_node_dir: Path | str = DEFAULT_LOCALSTACK_NODE_DIR,
    ) -> None:
        if engine not in ENGINES:
            msg = f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}"
            raise LocalAWSError(msg)
        self.state_dir = Path(state_dir).resolve()
        self.node_dir = Path(node_dir).resolve()
        self.kinesis_port = kinesis_port
        self.moto_port = moto_port
        self.start_timeout = start_timeout
        self.engine = engine
        self.localstack_venv = Path(localstack_venv).absolute()
        self.localstack_node_dir = Path(localstack_node_dir).resolve()
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
        """Start the engine's servers and wait until every one answers (``start_timeout`` seconds)."""
        if self.engine == LOCALSTACK_ENGINE:
            self._start_localstack()
            return
        began = time.monotonic()
        moto_python = _check_moto_server()
        node = _require_tool("node")
        self._check_not_running()
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

    def _check_not_running(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        previous = self._read_state()
        if previous is not None:
            running = [s for s in (*previous.services, *previous.spawned) if s.is_running()]
            if running:
                pids = ", ".join(f"{s.name} pid {s.pid}" for s in running)
                msg = f"a local AWS stack already runs from {self.state_dir} ({pids}); stop it first"
                raise LocalAWSError(msg)
            LOG.info("replacing the state of a stack that is no longer running")

    def _start_localstack(self) -> None:
        """LocalStack (Kinesis, STS) and moto (DynamoDB, CloudWatch); ready once a Kinesis call
        for ``ACCOUNT_ID`` answers, so its kinesis-mock runs and is recorded by PID."""
        moto_python = _check_moto_server()
        _require_tool("node")
        self._check_not_running()
        python = ensure_localstack(self.localstack_venv)
        kinesis_mock_dir = ensure_localstack_kinesis_mock(self.localstack_node_dir)
        began = time.monotonic()
        gateway_port, moto_port = _choose_ports(self.kinesis_port, self.moto_port)
        root = self.state_dir / "localstack"
        if root.exists():
            shutil.rmtree(root)  # a new LocalStack every start: nothing is carried over
        # Where LocalStack looks for an installed kinesis-mock (its "static libs", under
        # FILESYSTEM_ROOT): the locked install, so it installs nothing itself.
        libs = root / "usr" / "lib" / "localstack" / KINESIS_MOCK_PACKAGE
        libs.mkdir(parents=True)
        (libs / LOCALSTACK_KINESIS_MOCK_VERSION).symlink_to(kinesis_mock_dir, target_is_directory=True)
        preload = self.state_dir / "bind-loopback.js"
        preload.write_text(BIND_LOOPBACK_JS)
        inherited = {k: os.environ[k] for k in LOCALSTACK_INHERITED if k in os.environ}
        localstack_env = {
            **inherited,
            **LOCALSTACK_SETTINGS,
            "GATEWAY_LISTEN": f"{HOST}:{gateway_port}",
            "FILESYSTEM_ROOT": str(root),
            # the kinesis-mock processes LocalStack starts inherit this: they listen on 127.0.0.1 only
            "NODE_OPTIONS": f"--require {preload}",
        }
        moto_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            localstack = self._spawn(
                "localstack", [str(python), "-m", "localstack.runtime.main"], localstack_env, gateway_port
            )
            moto = self._spawn(
                "moto",
                [moto_python, "-m", "moto.server", "-H", HOST, "-p", str(moto_port)],
                moto_env,
                moto_port,
            )
            state = StackState(
                kinesis=localstack,
                kinesis_tls_port=0,
                moto=moto,
                started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                engine=LOCALSTACK_ENGINE,
            )
            state.write(self.state_file)
            self._state = state
            self._wait_until_ready(state)
            state = dataclasses.replace(state, spawned=_spawned_by(localstack))
            if not state.spawned:
                msg = f"LocalStack answered Kinesis calls but started no kinesis-mock\n{localstack.log_tail()}"
                raise LocalAWSError(msg)
            state.write(self.state_file)
            self._state = state
        except BaseException:
            self._stop_spawned()
            raise
        LOG.info(
            "ready in %.1f s: LocalStack %s (Kinesis, STS) on %s:%d (pid %d; kinesis-mock pid %s), "
            "moto (DynamoDB, CloudWatch) on %s:%d (pid %d)",
            time.monotonic() - began,
            LOCALSTACK_VERSION,
            HOST,
            gateway_port,
            localstack.pid,
            ", ".join(str(p.pid) for p in state.spawned),
            HOST,
            moto_port,
            moto.pid,
        )

    def stop(self) -> None:
        """Stop every server (SIGTERM, SIGKILL after a grace period) and remove the state file.

        LocalStack first (it stops its kinesis-mock itself), then whatever it started that is
        still running: those recorded at start and any it started later (another account's).
        """
        state = self._state or self._read_state()
        if state is None:
            LOG.info("no local AWS stack is recorded in %s; nothing to stop", self.state_dir)
            return
        began = time.monotonic()
        if state.engine == LOCALSTACK_ENGINE:
            spawned = list(state.spawned)
            if state.kinesis.is_running():
                spawned += [p for p in _spawned_by(state.kinesis) if p not in spawned]
            _terminate(list(state.services))  # LocalStack stops in ~2.5 s when it does
            _terminate(spawned)
        else:
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
            state.kinesis.name: (
                state.kinesis,
                _localstack_answers if state.engine == LOCALSTACK_ENGINE else _kinesis_answers,
            ),
            state.moto.name: (state.moto, _moto_answers),
        }
        deadline = time.monotonic() + self.start_timeout
        while probes:
            for name, (service, probe) in list(probes.items()):
                if not service.is_running():
                    tail = service.log_tail()
                    msg = f"{name} exited before it was ready\n{tail}"
                    if name == "moto" and "ModuleNotFoundError" in tail:
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
        """Clean up after a failed start: stop what this object spawned (and what LocalStack did)."""
        grandchildren = [p for child in self._children for p in _spawned_by_pid(child.pid)]
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()
        for process in grandchildren:
            process.send(signal.SIGKILL)
        self._children.clear()
        self.state_file.unlink(missing_ok=True)
        self._state = None


def ensure_kinesis_mock(node_dir: Path) -> Path:
    """Install the pinned kinesis-mock into ``node_dir`` unless it is there; return its package dir.

    A lock file written here pins the tarball's integrity and ``npm ci`` installs it. A file
    lock keeps parallel test workers from installing at the same time.
    """
    lock_packages = {
        f"node_modules/{KINESIS_MOCK_PACKAGE}": {
            "version": KINESIS_MOCK_VERSION,
            "integrity": KINESIS_MOCK_INTEGRITY,
            "license": "MIT",
            "bin": {KINESIS_MOCK_PACKAGE: "main.js"},
        },
    }
    _npm_ci_locked(node_dir, KINESIS_MOCK_VERSION, lock_packages)
    return node_dir / "node_modules" / KINESIS_MOCK_PACKAGE


def ensure_localstack_kinesis_mock(node_dir: Path) -> Path:
    """Install the kinesis-mock LocalStack runs into ``node_dir`` (locked, from the npm registry)
    unless it is there; return ``node_dir``, laid out as LocalStack's own install would be."""
    _npm_ci_locked(node_dir, LOCALSTACK_KINESIS_MOCK_VERSION, LOCALSTACK_KINESIS_MOCK_LOCK)
    return node_dir


def _npm_ci_locked(node_dir: Path, version: str, lock_packages: Mapping[str, Mapping[str, Any]]) -> None:
    """``npm ci`` of kinesis-mock ``version`` into ``node_dir`` with a lock file of ``lock_packages``."""
    package_dir = node_dir / "node_modules" / KINESIS_MOCK_PACKAGE
    if _installed_version(package_dir) == version:
        return
    npm = _require_tool("npm")
    node_dir.mkdir(parents=True, exist_ok=True)
    with (node_dir / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(package_dir) == version:
            return
        LOG.info("installing %s@%s into %s", KINESIS_MOCK_PACKAGE, version, node_dir)
        manifest = {
            "name": "thyme-local-aws",
            "private": True,
            "dependencies": {KINESIS_MOCK_PACKAGE: version},
        }
        lockfile = {
            "name": "thyme-local-aws",
            "lockfileVersion": 3,
            "requires": True,
            "packages": {
                "": {"name": "thyme-local-aws", "dependencies": manifest["dependencies"]},
                **lock_packages,
            },
        }
        (node_dir / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (node_dir / "package-lock.json").write_text(json.dumps(lockfile, indent=2) + "\n")
        argv = [npm, "ci", "--prefix", str(node_dir), "--ignore-scripts", "--no-audit", "--no-fund"]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0 or _installed_version(package_dir) != version:
            output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
            msg = f"{shlex.join(argv)} failed with code {result.returncode}:\n" + "\n".join(output)
            raise LocalAWSError(msg)


def ensure_localstack(venv_dir: Path, requirements: Path = LOCALSTACK_REQUIREMENTS) -> Path:
    """The Python of LocalStack's own virtualenv ``venv_dir``, created from ``requirements``
    (every distribution pinned, installed with ``--no-deps``) unless it is there; return it.

    A stamp in the virtualenv names the requirements' hash and the Python version: when either
    changes the virtualenv is made anew, never upgraded in place.
    """
    python = venv_dir / "bin" / "python"
    want = _localstack_stamp(requirements)
    stamp = venv_dir / LOCALSTACK_STAMP
    if _read_text(stamp) == want and python.exists():
        return python
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with (venv_dir.parent / f".{venv_dir.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read_text(stamp) == want and python.exists():
            return python
        began = time.monotonic()
        LOG.info("installing LocalStack %s into %s (from %s)", LOCALSTACK_VERSION, venv_dir, requirements)
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        # From a virtualenv's Python, venv builds on the base interpreter that one was made from.
        steps = [
            [sys.executable, "-m", "venv", str(venv_dir)],
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
                str(requirements),
            ],
            [str(python), "-m", "pip", "check", "--disable-pip-version-check"],
        ]
        for argv in steps:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL_LINES:]
                msg = f"{shlex.join(argv)} failed with code {result.returncode}:\n" + "\n".join(output)
                raise LocalAWSError(msg)
        stamp.write_text(want)
        LOG.info("LocalStack installed in %.0f s", time.monotonic() - began)
    return python


def _localstack_stamp(requirements: Path) -> str:
    try:
        digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    except OSError as exc:
        msg = f"cannot read LocalStack's requirements {requirements}: {exc.strerror}"
        raise LocalAWSError(msg) from exc
    return f"{digest} python{sys.version_info.major}.{sys.version_info.minor}\n"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


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


def _spawned_by(service: ServiceProcess) -> tuple[ServiceProcess, ...]:
    """The processes below ``service`` (LocalStack's kinesis-mock), each named by PID and start time."""
    return _spawned_by_pid(service.pid, service.log_path) if service.is_running() else ()


def _spawned_by_pid(pid: int, log_path: str = "") -> tuple[ServiceProcess, ...]:
    if not _HAS_PROCFS:
        return ()
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found: list[ServiceProcess] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            queue.append(child)
            marker = _start_marker(child)
            try:
                argv = tuple(
                    a.decode(errors="replace") for a in Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0") if a
                )
            except OSError:
                continue
            if marker is not None and argv:
                name = KINESIS_MOCK_ENGINE if any(a.endswith("main.js") for a in argv) else Path(argv[0]).name
                found.append(ServiceProcess(name, child, 0, log_path, marker, argv))
    return tuple(found)


# Servers that may outlive a SIGTERM, and why: expected, and harmless for emulators that keep
# nothing on disk, so said as such (a warning for any other server).
SLOW_TO_STOP: Mapping[str, str] = {
    # it waits for clients' keep-alive connections to close, which a stopped consumer's JVM may never do
    "kinesis-mock": "it waits for open keep-alive connections",
    # about one stop in six here: its shutdown ends (kinesis-mock included) but the gateway's event loop runs on
    "localstack": "its shutdown sometimes leaves the gateway's event loop running",
}


def _terminate(services: list[ServiceProcess], grace: float = TERM_GRACE_SECONDS) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; only processes that are still the recorded ones."""
    running = [s for s in services if s.is_running()]
    for service in services:
        if service not in running:
            LOG.info("%s (pid %d) is no longer running; not signalling it", service.name, service.pid)
    for service in running:
        LOG.info("stopping %s (pid %d)", service.name, service.pid)
        service.send(signal.SIGTERM)
    running = _wait_for_exit(running, grace)
    for service in running:
        LOG.log(
            logging.INFO if service.name in SLOW_TO_STOP else logging.WARNING,
            "%s (pid %d) still running %.0f s after SIGTERM (%s); stopping it with SIGKILL",
            service.name,
            service.pid,
            grace,
            SLOW_TO_STOP.get(service.name, "unexpected"),
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


def _post_json(
    port: int,
    target: str | None,
    content_type: str,
    service: str,
    *,
    access_key: str = "test",
    body: bytes = b"{}",
    timeout: float = 2,
) -> bool:
    """Whether an empty call (JSON protocol, or a query-protocol ``body`` with no ``target``) answers 200.

    No server here checks signatures, but kinesis-mock wants an Authorization header with a
    credential scope, and a date; LocalStack takes the account from its access key.
    """
    now = dt.datetime.now(dt.UTC)
    scope = f"{now:%Y%m%d}/{REGION}/{service}/aws4_request"
    signature = "SignedHeaders=host;x-amz-date, Signature=0"
    headers = {
        "Content-Type": content_type,
        "X-Amz-Date": f"{now:%Y%m%dT%H%M%SZ}",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, {signature}",
    }
    if target is not None:
        headers["X-Amz-Target"] = target
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body, headers=headers)
        return connection.getresponse().status == HTTPStatus.OK
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _kinesis_answers(port: int) -> bool:
    return _post_json(port, "Kinesis_20131202.ListStreams", "application/x-amz-json-1.1", "kinesis")


def _moto_answers(port: int) -> bool:
    return _post_json(port, "DynamoDB_20120810.ListTables", "application/x-amz-json-1.0", "dynamodb")


def _localstack_answers(port: int) -> bool:
    """STS answers, and Kinesis for ``ACCOUNT_ID`` (the first such call starts its kinesis-mock)."""
    sts = _post_json(
        port,
        None,
        "application/x-www-form-urlencoded",
        "sts",
        access_key=ACCOUNT_ID,
        body=b"Action=GetCallerIdentity&Version=2011-06-15",
    )
    return sts and _post_json(
        port,
        "Kinesis_20131202.ListStreams",
        "application/x-amz-json-1.1",
        "kinesis",
        access_key=ACCOUNT_ID,
        timeout=LOCALSTACK_PROBE_TIMEOUT,
    )


def _exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def engine_from_env(engine: str | None = None) -> str:
    """``engine`` if given, else ``$THYME_LOCAL_AWS_ENGINE``, else the default engine (kinesis-mock)."""
    chosen = engine or os.environ.get(ENGINE_ENV, "").strip() or KINESIS_MOCK_ENGINE
    if chosen not in ENGINES:
        msg = f"{ENGINE_ENV}={chosen!r} is not an engine: use one of {', '.join(ENGINES)}"
        raise LocalAWSError(msg)
    return chosen


def install(engine: str) -> None:
    """Install what ``engine`` runs, starting nothing (quick when it is installed already)."""
    if engine == LOCALSTACK_ENGINE:
        ensure_localstack(DEFAULT_LOCALSTACK_VENV)
        ensure_localstack_kinesis_mock(DEFAULT_LOCALSTACK_NODE_DIR)
        LOG.info(
            "LocalStack %s in %s, kinesis-mock %s in %s: installed",
            LOCALSTACK_VERSION,
            DEFAULT_LOCALSTACK_VENV,
            LOCALSTACK_KINESIS_MOCK_VERSION,
            DEFAULT_LOCALSTACK_NODE_DIR,
        )
    else:
        ensure_kinesis_mock(DEFAULT_NODE_DIR)
        LOG.info("kinesis-mock %s in %s: installed", KINESIS_MOCK_VERSION, DEFAULT_NODE_DIR)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start the stack, print export lines")
    env = commands.add_parser("env", help="print the export lines of the running stack")
    stop = commands.add_parser("stop", help="stop the stack")
    setup = commands.add_parser("install", help="install what an engine runs (starts nothing)")
    for command in (start, env, stop):
        command.add_argument(
            "--state-dir",
            type=Path,
            default=DEFAULT_STATE_DIR,
            help=f"default: {DEFAULT_STATE_DIR}",
        )
    for command in (start, setup):
        command.add_argument(
            "--engine",
            choices=ENGINES,
            help=f"kinesis-mock: kinesis-mock + moto; localstack: LocalStack (Kinesis, STS) + moto (DynamoDB, "
            f"CloudWatch) (default: ${ENGINE_ENV}, else {KINESIS_MOCK_ENGINE})",
        )
    start.add_argument(
        "--kinesis-port", type=int, help="port of the Kinesis server: kinesis-mock or LocalStack (default: a free one)"
    )
    start.add_argument("--moto-port", type=int, help="moto server port (default: a free one)")
    start.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds to wait until every server answers",
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
            engine=engine_from_env(args.engine),
        )
        stack.start()
        return stack.env()
    if args.command == "env":
        return LocalAWS.attach(args.state_dir).env()
    if args.command == "install":
        install(engine_from_env(args.engine))
        return None
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
