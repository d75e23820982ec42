"""End to end: the IAM policies in ``deploy/iam/`` allow every AWS call the consumer really makes.

The consumer runs as a user runs it (``thyme kinesis run`` with a ``role_arn``, the
cross-account set-up), but its three endpoints point at small recording proxies in front of
the local stack. A proxy forwards bytes unchanged and decodes each request the client sends:
HTTP/1.1 (DynamoDB, STS, from Java and boto3) and HTTP/2 with prior knowledge (the daemon's
Kinesis client), whose headers are HPACK-compressed. Each call becomes ``(service:action,
resource, access key)``; the access key says which identity signed it (the consumer's own
credentials, or the assumed role's). Then every call must be allowed by the policy of the
identity that made it: ``consumer-cross-account-policy.json`` for the consumer's own
credentials, ``stream-role-policy.json`` for the role. CloudWatch is not exercised here (the
local profile sets ``metricsLevel = NONE``: KCL has no CloudWatch endpoint key).

The same run measures the resident memory of the JVM and of each shard's child, the figures
the deployment's memory requests are sized from (``deploy/k8s/deployment.yaml``).

This test starts a stack of its own rather than the session's: it assumes a role, and moto
keeps every assumed role for the rest of its life, which another test inspects.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hpack import Decoder

from tests.e2e.harness import REPO, Consumer, Ledger, StoreView, events, produce, unique, write_app

sys.path.insert(0, str(REPO / "scripts"))

import local_aws
import streams
import validate_deploy

ROLE = "arn:aws:iam::111122223333:role/thyme-stream-reader"  # not the consumer's account
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_FRAME_DATA, _FRAME_HEADERS, _FRAME_CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20


@dataclass(frozen=True)
class Call:
    """One AWS API call seen on the wire."""

    service: str
    """The SigV4 signing name: ``kinesis``, ``dynamodb``, ``sts``."""
    operation: str
    access_key: str
    table: str | None = None
    index: str | None = None
    role_arn: str | None = None

    @property
    def action(self) -> str:
        return f"{self.service}:{self.operation}"


def _call(headers: dict[str, str], body: bytes) -> Call:
    found = _CREDENTIAL.search(headers.get("authorization", ""))
    if found is None:
        raise ValueError(f"unsigned request: {sorted(headers)}")
    access_key, _region, service = found.groups()
    target = headers.get("x-amz-target")
    if target:  # the JSON/CBOR protocols: Kinesis_20131202.GetRecords, DynamoDB_20120810.GetItem
        operation = target.rpartition(".")[2]
        table = index = None
        if service == "dynamodb":
            request = json.loads(body or b"{}")
            table, index = request.get("TableName"), request.get("IndexName")
        return Call(service, operation, access_key, table=table, index=index)
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))  # the query protocol (STS)
    return Call(service, form["Action"][0], access_key, role_arn=form.get("RoleArn", [None])[0])


class RequestTap:
    """Decodes the requests in one client-to-server byte stream (HTTP/1.1 or h2c)."""

    def __init__(self, record: Any) -> None:
        self.record = record
        self.buffer = b""
        self.mode: str | None = None
        self.hpack = Decoder()
        self.hpack.max_allowed_table_size = 1 << 20  # whatever the server allowed the client
        self.blocks: dict[int, bytes] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytes] = {}

    def feed(self, data: bytes) -> None:
        self.buffer += data
        if self.mode is None:
            if len(self.buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self.buffer):
                return
            self.mode = "h2" if self.buffer.startswith(H2_PREFACE) else "http/1.1"
            if self.mode == "h2":
                self.buffer = self.buffer[len(H2_PREFACE) :]
        if self.mode == "h2":
            self._h2()
        else:
            self._http1()

    def _http1(self) -> None:
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise ValueError("chunked request bodies are not decoded")
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.record(_call(headers, body))

    def _h2(self) -> None:
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            stream = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
            payload = self.buffer[9 : 9 + length]
            self.buffer = self.buffer[9 + length :]
            if kind in (_FRAME_DATA, _FRAME_HEADERS) and flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if kind == _FRAME_HEADERS:
                if flags & _PRIORITY:
                    payload = payload[5:]
                self.blocks[stream] = payload
            elif kind == _FRAME_CONTINUATION:
                self.blocks[stream] += payload
            elif kind == _FRAME_DATA:
                self.bodies[stream] = self.bodies.get(stream, b"") + payload
            if kind in (_FRAME_HEADERS, _FRAME_CONTINUATION) and flags & _END_HEADERS:
                decoded = self.hpack.decode(self.blocks.pop(stream))
                self.headers[stream] = {str(k).lower(): str(v) for k, v in decoded}
            if kind in (_FRAME_HEADERS, _FRAME_DATA) and flags & _END_STREAM and stream in self.headers:
                self.record(_call(self.headers.pop(stream), self.bodies.pop(stream, b"")))


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 that forwards bytes unchanged and records the requests."""

    def __init__(self, upstream_url: str) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
            raise AssertionError(f"the recording proxy needs a plain-HTTP endpoint, not {upstream_url!r}")
        self.upstream = (parsed.hostname, parsed.port)
        self.calls: list[Call] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError as exc:
                self.errors.append(f"cannot reach {self.upstream}: {exc}")
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            tap = RequestTap(self._record)
            threading.Thread(target=self._pump, args=(client, upstream, tap), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, tap: RequestTap | None) -> None:
        try:
            while data := source.recv(65536):
                if tap is not None:
                    try:
                        tap.feed(data)
                    except Exception as exc:  # keep forwarding; the test reports it
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        tap = None
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local AWS stack for this module only (or the environment's endpoints)."""
    if os.environ.get("THYME_E2E_ENDPOINTS") == "env":
        from tests.e2e.conftest import ENV_KEYS

        yield {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
        return
    with local_aws.LocalAWS(state_dir=tmp_path_factory.mktemp("local-aws-iam")) as stack:
        yield stack.env()


def _rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of ``pid`` in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _jvm(consumer: Consumer) -> int:
    assert consumer.process is not None
    for pid in streams.descendants(consumer.process.pid):
        with contextlib.suppress(OSError):
            if b"MultiLangDaemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise AssertionError("no JVM below the consumer")


def _health_check(command: str, consumer: Consumer) -> int:
    """Run the task definition's health check against this consumer's processes only."""
    assert consumer.process is not None
    paths = " ".join(
        f"/proc/{pid}/cmdline" for pid in [consumer.process.pid, *streams.descendants(consumer.process.pid)]
    )
    scoped = command.replace("/proc/[0-9]*/cmdline", paths)
    assert scoped != command, f"the health check no longer reads /proc/[0-9]*/cmdline: {command}"
    return subprocess.run(["/bin/sh", "-c", scoped], check=False).returncode


def test_the_policies_allow_every_call_the_consumer_makes(
    own_stack: dict[str, str], consumers: list[Consumer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key, value in own_stack.items():
        monkeypatch.setenv(key, value)
    kinesis = streams.kinesis_client()
    stream = unique("e2e-iam")
    arn = streams.create_stream(kinesis, stream, 2)
    ledger = Ledger()
    produce(kinesis, stream, ledger.expect_valid(events(0, 40)))

    kinesis_proxy = RecordingProxy(own_stack["THYME_KINESIS_ENDPOINT_URL"])
    dynamodb_proxy = RecordingProxy(own_stack["THYME_DYNAMODB_ENDPOINT_URL"])
    sts_proxy = RecordingProxy(own_stack["THYME_STS_ENDPOINT_URL"])
    proxies = (kinesis_proxy, dynamodb_proxy, sts_proxy)
    application = unique("thyme-iam")
    env = {
        **os.environ,
        "E2E_ROLE": ROLE,
        "THYME_KINESIS_ENDPOINT_URL": kinesis_proxy.url,
        "THYME_DYNAMODB_ENDPOINT_URL": dynamodb_proxy.url,
        "THYME_STS_ENDPOINT_URL": sts_proxy.url,
    }
    app = write_app(tmp_path, arn, "trim_horizon", role_env="E2E_ROLE")
    consumer = Consumer(app, tmp_path / "thyme.db", application, "w1", env, tmp_path / "consumer.log")
    budget = validate_deploy.MemoryBudget.from_deployment()  # run as the Deployment sizes a pod
    consumer.extra_args = ["--max-shards", str(budget.shards_per_pod), "--memory-budget", f"{budget.total_mib:g}MiB"]
    plan = budget.plan("sqlite")  # this consumer's store
    consumers.append(consumer)
    try:
        consumer.start()
        StoreView(consumer.store).wait_total(ledger.total, 100, consumer)
        StoreView(consumer.store).check(ledger)
        consumer.status()  # `thyme kinesis status` reads the lease table with the consumer's identity

        # Memory, as the deployment is sized: the JVM, and each shard's child.
        jvm_rss = _rss_kib(_jvm(consumer))
        children = [_rss_kib(pid) for pid in consumer.children()]
        assert len(children) == 2
        sys.stderr.write(f"measured RSS KiB (current, peak): jvm {jvm_rss}, children {children}\n")
        assert f"-Xmx{plan.heap_mib}m".encode() in Path(f"/proc/{_jvm(consumer)}/cmdline").read_bytes()
        assert jvm_rss[1] <= plan.jvm_mib() * 1024, f"JVM peak RSS {jvm_rss[1]} KiB exceeds {plan.describe()}"
        assert all(peak <= plan.child_mib() * 1024 for _, peak in children), (children, plan.describe())

        # The ECS health check passes while the daemon runs.
        health = validate_deploy.ecs_health_command()
        assert _health_check(health, consumer) == 0
        assert consumer.stop() == 0  # graceful: shutdownRequested, checkpoints, lease hand-off
        assert _health_check(health, consumer) != 0
    finally:
        for proxy in proxies:
            proxy.close()

    for proxy in proxies:
        assert proxy.errors == [], proxy.errors
    calls = [c for proxy in proxies for c in proxy.calls]
    by_service = {p: {c.action for c in p.calls} for p in proxies}
    sys.stderr.write(f"recorded actions: {json.dumps({p.url: sorted(a) for p, a in by_service.items()})}\n")
    # The recording saw the calls that must have happened (proof that it works at all).
    assert {"kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"} <= by_service[kinesis_proxy]
    assert {"dynamodb:CreateTable", "dynamodb:Scan", "dynamodb:UpdateItem"} <= by_service[dynamodb_proxy]
    assert by_service[sts_proxy] == {"sts:AssumeRole"}

    # Which identity made each call: the assumed role's keys are the ones STS handed out.
    own_key = own_stack["AWS_ACCESS_KEY_ID"]
    role_calls = [c for c in calls if c.access_key != own_key]
    own_calls = [c for c in calls if c.access_key == own_key]
    assert {c.service for c in role_calls} == {"kinesis"}, "only the Kinesis client may use the role"
    assert {c.role_arn for c in own_calls if c.service == "sts"} == {ROLE}

    region = own_stack.get("AWS_REGION", "us-east-1")
    stream_account = arn.split(":")[4]
    values = {
        **validate_deploy.EXAMPLE_VALUES,
        "AWS_REGION": region,
        "ACCOUNT_ID": local_aws.ACCOUNT_ID,
        "STREAM_NAME": stream,
        "APPLICATION_NAME": application,
        "STREAM_ROLE_NAME": ROLE.rpartition("/")[2],
    }
    # The role lives in the stream's account; kinesis-mock keeps its streams in moto's default
    # account, so each policy is rendered with the account its resources really have.
    consumer_policy = validate_deploy.load_policy(
        "consumer-cross-account-policy.json", {**values, "STREAM_ACCOUNT_ID": ROLE.split(":")[4]}
    )
    role_policy = validate_deploy.load_policy(
        "stream-role-policy.json", {**values, "STREAM_ACCOUNT_ID": stream_account}
    )

    def resource(call: Call) -> str:
        if call.service == "kinesis":
            return arn
        if call.service == "sts":
            assert call.role_arn is not None
            return call.role_arn
        assert call.table is not None, call
        table = f"arn:aws:dynamodb:{region}:{local_aws.ACCOUNT_ID}:table/{call.table}"
        return f"{table}/index/{call.index}" if call.index else table

    seen = sorted({(c.action, resource(c).replace(application, "APP"), c.access_key == own_key) for c in calls})
    sys.stderr.write(f"recorded (action, resource, own identity): {seen}\n")
    denied = sorted(
        {
            (c.action, resource(c))
            for c in own_calls
            if not validate_deploy.allows(consumer_policy, c.action, resource(c))
        }
        | {
            (c.action, resource(c))
            for c in role_calls
            if not validate_deploy.allows(role_policy, c.action, resource(c))
        }
    )
    assert denied == [], f"calls the policies would deny: {denied}"

    # Least privilege: every granted action was used, except those KCL needs only sometimes.
    used = {c.action.lower() for c in calls}
    granted = validate_deploy.granted_actions(consumer_policy) | validate_deploy.granted_actions(role_policy)
    unused = sorted(a for a in granted if a.lower() not in used)
    assert set(unused) <= set(validate_deploy.CONDITIONAL_ACTIONS), (
        f"granted but never used, and not documented as conditional: {sorted(set(unused) - set(validate_deploy.CONDITIONAL_ACTIONS))}"
    )
