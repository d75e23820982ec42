"""End to end: secrets never leave the consumer.

Two recognizable secrets: a role ARN behind ``Secret(env=...)`` and a PostgreSQL password in the
store URL. A real run (``thyme kinesis run``, the daemon, its children) and every command a user
runs next to it are scanned for them: log lines, error messages, ``repr``, command output,
process command lines, and every file the run leaves behind (temporary directories, the
store's tables and its files on disk). The one place the role ARN may be written is the KCL
properties file, and the one place the password may be written is the child's config beside
it: both 0600 in a private 0700 directory that exists only while the consumer runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg
import pytest
import streams

from tests.e2e.harness import THYME, Consumer, events, produce, unique, wait_for, write_app
from tests.pg_server import PgServer

TOKEN = secrets.token_hex(4)
ROLE_NAME = f"cnry-role-{TOKEN}"
ROLE = f"arn:aws:iam::111122223333:role/{ROLE_NAME}"
PASSWORD = f"cnry-pw-{TOKEN}:q1{secrets.token_hex(4)}@q2{secrets.token_hex(4)}/q3{secrets.token_hex(4)}"
"""With characters that must be percent-encoded in a URL; each piece between them is looked for too."""
WRONG_PASSWORD = f"cnry-wrong-{TOKEN}"
ROLE_ENV = "E2E_SECRET_ROLE"


def secret_forms() -> dict[str, bytes]:
    """Every form in which a secret (or a recognizable piece of one) could show."""
    forms = {
        "role arn": ROLE,
        "role name": ROLE_NAME,
        "password": PASSWORD,
        "password, percent-encoded": quote(PASSWORD, safe=""),
        "wrong password": WRONG_PASSWORD,
    }
    for i, piece in enumerate(PASSWORD.replace("@", ":").replace("/", ":").split(":")):
        forms[f"password piece {i}"] = piece
    found = {name: value.encode() for name, value in forms.items()}
    found["password, base64"] = base64.b64encode(PASSWORD.encode())
    return found


FORMS = secret_forms()


def leaks(data: str | bytes, allowed: tuple[str, ...] = ()) -> list[str]:
    """Names of the secret forms found in ``data``."""
    blob = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [name for name, form in FORMS.items() if form in blob and not name.startswith(allowed)]


def scram_verifier(password: str) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier for ``password``, computed here: the server never
    sees the password itself, so the store's own files can be searched for it too."""
    salt, iterations = secrets.token_bytes(16), 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    stored = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server_key)}"


@pytest.fixture(scope="module")
def canary_url(pg_server: PgServer) -> str:
    """A database owned by a role whose password is :data:`PASSWORD`; its URL (password encoded)."""
    role, database = f"canary_{TOKEN}", f"canary_{TOKEN}"
    with psycopg.connect(pg_server.admin_conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{scram_verifier(PASSWORD)}'")
        conn.execute(f"CREATE DATABASE {database} OWNER {role} TEMPLATE template0")
    return f"postgresql://{role}:{quote(PASSWORD, safe='')}@127.0.0.1:{pg_server.port}/{database}"


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([THYME, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)


class EnvStoreConsumer(Consumer):
    """A consumer given its store by ``THYME_STORE_URL`` (not ``--store``, which any local user
    could read in the process list), as a deployment with a secret manager does."""

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--store")
        return command[:at] + command[at + 2 :]


def command_lines(pid: int) -> dict[int, bytes]:
    """The command line of ``pid`` and of every process below it."""
    found: dict[int, bytes] = {}
    for each in [pid, *streams.descendants(pid)]:
        try:
            found[each] = Path(f"/proc/{each}/cmdline").read_bytes()
        except OSError:
            continue
    return found


def files_under(*roots: Path, since: float) -> Iterator[Path]:
    """Regular files under ``roots`` changed at or after ``since`` (at most 64 MiB each)."""
    for root in roots:
        for folder, _, names in os.walk(root):
            if "/local-aws" in folder:
                continue  # the emulated AWS side (moto keeps the AssumeRole calls it served, as AWS does)
            for name in names:
                path = Path(folder, name)
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_mtime >= since and info.st_size <= 64 * 1024 * 1024:
                    yield path


def test_a_run_and_every_command_beside_it_keep_the_secrets(
    kinesis: Any, aws: dict[str, str], consumers: list[Consumer], canary_url: str, pg_server: PgServer, tmp_path: Path
) -> None:
    started = time.time() - 1
    stream = unique("e2e-secrets")
    arn = streams.create_stream(kinesis, stream, 1)
    produce(kinesis, stream, events(0, 20))
    produce(kinesis, stream, [("u1", b"{not json")])
    app = write_app(tmp_path, arn, "trim_horizon", role_env=ROLE_ENV)
    env = {**os.environ, **aws, ROLE_ENV: ROLE, "THYME_STORE_URL": canary_url}
    consumer = EnvStoreConsumer(app, tmp_path / "unused.db", unique("e2e-secrets"), "w1", env, tmp_path / "run.log")
    consumers.append(consumer)
    consumer.start()
    assert consumer.process is not None

    def landed() -> bool:
        if not consumer.alive():
            raise AssertionError(f"the consumer exited:\n{consumer.log_text()[-4000:]}")
        with psycopg.connect(canary_url, connect_timeout=10) as conn:
            if conn.execute("""SELECT to_regclass('"ds_Clicks_v1"')""").fetchone() in (None, (None,)):
                return False
            rows = conn.execute('SELECT count(*) FROM "ds_Clicks_v1"').fetchone()
            dead = conn.execute("SELECT count(*) FROM thyme_dead_letters").fetchone()
        return rows == (20,) and dead == (1,)

    wait_for(landed, 180, "20 rows and 1 dead letter in the PostgreSQL store", interval=0.5)

    # -- while running: the private directory, the process list ------------------------------
    cmdlines = command_lines(consumer.process.pid)
    jvm = [line.split(b"\0") for line in cmdlines.values() if b"--properties-file" in line]
    assert len(jvm) == 1, cmdlines
    properties = Path(jvm[0][jvm[0].index(b"--properties-file") + 1].decode())
    private = properties.parent
    assert private.parent == Path(tempfile.gettempdir())
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert private.stat().st_uid == os.getuid()
    assert sorted(p.name for p in private.iterdir()) == ["kcl.properties", "processor.json"]
    for path in private.iterdir():
        assert (path.name, stat.S_IMODE(path.stat().st_mode), path.stat().st_uid) == (path.name, 0o600, os.getuid())
    assert ROLE.encode() in properties.read_bytes()  # the one place the role is written: the daemon reads it there
    assert leaks(properties.read_bytes(), allowed=("role",)) == []
    config = private / "processor.json"
    assert FORMS["password, percent-encoded"] in config.read_bytes()  # the child's store URL, for the child only
    assert leaks(config.read_bytes(), allowed=("password",)) == []
    for pid, line in cmdlines.items():
        assert (pid, leaks(line)) == (pid, [])  # command lines are world-readable

    # -- every command a user runs beside it (the store URL on the command line) ---------------
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    target = f"{app}:Clicks"
    with_store = ("--store", canary_url)
    common = ("--application-name", consumer.application)
    outputs["status"] = run_cli("kinesis", "status", target, *with_store, *common, env=env, cwd=tmp_path)
    outputs["status --json"] = run_cli(
        "kinesis", "status", target, *with_store, *common, "--json", env=env, cwd=tmp_path
    )
    outputs["properties"] = run_cli("kinesis", "properties", target, *with_store, *common, env=env, cwd=tmp_path)
    outputs["dead-letters"] = run_cli("kinesis", "dead-letters", target, *with_store, env=env, cwd=tmp_path)
    outputs["lookup"] = run_cli("lookup", target, "u1", *with_store, env=env, cwd=tmp_path)
    outputs["migrate --print"] = run_cli("store", "migrate", target, *with_store, "--print", env=env, cwd=tmp_path)
    outputs["migrate"] = run_cli("store", "migrate", target, *with_store, env=env, cwd=tmp_path)
    for name, done in outputs.items():
        assert (name, done.returncode, leaks(done.stdout + done.stderr)) == (name, 0, []), done.stderr
    assert "AwsCredentialsProvider = StsAssumeRoleCredentialsProvider|<redacted>|" in outputs["properties"].stdout
    assert '"invalid_json":1' in outputs["status --json"].stdout
    assert '"reason":"invalid_json"' in outputs["dead-letters"].stdout
    assert '"user_id":"u1"' in outputs["lookup"].stdout
    assert "CREATE TABLE" in outputs["migrate --print"].stdout
    assert outputs["migrate"].stderr.startswith(f"thyme: store postgresql://canary_{TOKEN}:***@127.0.0.1:")

    # -- stopped: nothing left behind ---------------------------------------------------------
    assert consumer.stop() == 0
    assert not private.exists()
    log = consumer.log_text()
    assert "shutdown requested; checkpointing the last applied record" in log  # the run did run
    assert leaks(log) == []
    with psycopg.connect(canary_url) as conn:
        tables = [name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        assert "thyme_dead_letters" in tables
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                assert (table, leaks(repr(row))) == (table, [])
    scanned = 0
    for path in files_under(tmp_path, Path(tempfile.gettempdir()), pg_server.base, since=started):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        scanned += 1
        assert (str(path), leaks(data)) == (str(path), [])
    assert scanned >= 3  # the app, the run's log, the store's files at least


def test_the_store_password_is_redacted_in_every_error(
    aws: dict[str, str], canary_url: str, pg_server: PgServer, tmp_path: Path
) -> None:
    """A wrong password, an unreachable server, an unknown database: one line, exit status 2,
    the URL shown with ``***`` for its password."""
    app = write_app(tmp_path, "arn:aws:kinesis:us-east-1:123456789012:stream/never-read", role_env=ROLE_ENV)
    env = {**os.environ, **aws, ROLE_ENV: ROLE}
    user = f"canary_{TOKEN}"
    port = pg_server.port
    bad = {
        "wrong password": f"postgresql://{user}:{WRONG_PASSWORD}@127.0.0.1:{port}/canary_{TOKEN}",
        "unreachable": f"postgresql://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:1/canary_{TOKEN}",
        "no such database": f"postgresql://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/nope_{TOKEN}",
    }
    commands = {
        "kinesis run": ("kinesis", "run", f"{app}:Clicks"),
        "kinesis dead-letters": ("kinesis", "dead-letters", f"{app}:Clicks"),
        "lookup": ("lookup", f"{app}:Clicks", "u1"),
        "store migrate": ("store", "migrate", f"{app}:Clicks"),
    }
    no_connection = {  # they only print, and never connect to the store
        "kinesis properties": ("kinesis", "properties", f"{app}:Clicks"),
        "store migrate --print": ("store", "migrate", f"{app}:Clicks", "--print"),
    }
    for problem, url in bad.items():
        for name, args in no_connection.items():
            done = run_cli(*args, "--store", url, env=env, cwd=tmp_path)
            assert ((problem, name), done.returncode, leaks(done.stdout + done.stderr)) == ((problem, name), 0, [])
        for name, args in commands.items():
            done = run_cli(*args, "--store", url, env=env, cwd=tmp_path)
            where = (problem, name)
            assert (where, done.returncode, done.stdout) == (where, 2, "")
            assert (where, leaks(done.stderr)) == (where, [])
            assert done.stderr.startswith("thyme: error: "), (where, done.stderr)
            assert done.stderr.count("\n") == 1, (where, done.stderr)
            assert f"postgresql://{user}:***@127.0.0.1:" in done.stderr, (where, done.stderr)


def test_a_password_in_the_url_query_is_redacted(canary_url: str, tmp_path: Path) -> None:
    """libpq also takes the password as ``?password=``; it must be hidden like the other form."""
    app = write_app(tmp_path, "arn:aws:kinesis:us-east-1:123456789012:stream/never-read")
    base, _, _ = canary_url.partition("?")
    userinfo, _, host = base.removeprefix("postgresql://").rpartition("@")
    url = f"postgresql://{userinfo.split(':')[0]}@{host}?password={quote(PASSWORD, safe='')}"
    done = run_cli("store", "migrate", f"{app}:Clicks", "--store", url, env=dict(os.environ), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert leaks(done.stdout + done.stderr) == [], done.stderr


def test_a_password_that_was_not_percent_encoded_is_not_shown_in_part(canary_url: str, tmp_path: Path) -> None:
    """A password pasted into the URL without percent-encoding (its ``@`` and ``/`` then split
    the URL in the wrong places) must still be hidden whole when the URL is shown."""
    app = write_app(tmp_path, "arn:aws:kinesis:us-east-1:123456789012:stream/never-read")
    userinfo, _, host = canary_url.removeprefix("postgresql://").rpartition("@")
    url = f"postgresql://{userinfo.split(':')[0]}:{PASSWORD}@{host}"
    done = run_cli("lookup", f"{app}:Clicks", "u1", "--store", url, env=dict(os.environ), cwd=tmp_path)
    assert done.returncode == 2
    assert leaks(done.stdout + done.stderr) == [], done.stderr


def test_no_repr_shows_a_secret(canary_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects a consumer holds once its secrets are resolved: their ``repr`` (what a
    debugger, a traceback with locals or a careless log line shows) hides the secrets."""
    from thyme.connectors.source import source_spec
    from thyme.handover import ProcessorConfig
    from thyme.kinesis.launcher import RunOptions, plan
    from thyme.loader import load_dataset
    from thyme.store import open_store

    monkeypatch.setenv(ROLE_ENV, ROLE)
    klass = load_dataset(
        f"{write_app(tmp_path, 'arn:aws:kinesis:us-east-1:123456789012:stream/s', role_env=ROLE_ENV)}:Clicks"
    )
    spec = source_spec(klass)
    assert spec is not None
    the_plan = plan(klass, RunOptions(store_url=canary_url))
    store = open_store(canary_url)
    try:
        shown = {
            "SourceSpec": repr(spec),
            "KinesisSource": repr(spec.connector),
            "KinesisConnection": repr(spec.connector.resolve()),
            "store": repr(store) + str(store.url),
            "KclProperties": repr(the_plan.properties),
            "ProcessorConfig": repr(the_plan.config),
            "ProcessorConfig from a file": repr(msgspec.json.decode(the_plan.config.to_json(), type=ProcessorConfig)),
            "Plan": repr(the_plan),
        }
    finally:
        store.close()
    assert {name: leaks(text) for name, text in shown.items()} == {name: [] for name in shown}


def test_an_unparseable_store_url_is_one_line_without_the_password(tmp_path: Path) -> None:
    """A URL Python cannot split (an unclosed IPv6 bracket) is a one-line error like any other,
    not a traceback."""
    app = write_app(tmp_path, "arn:aws:kinesis:us-east-1:123456789012:stream/never-read")
    url = f"postgresql://canary:{quote(PASSWORD, safe='')}@[::1/db"
    for args in (("lookup", f"{app}:Clicks", "u1"), ("kinesis", "dead-letters", f"{app}:Clicks")):
        done = run_cli(*args, "--store", url, env=dict(os.environ), cwd=tmp_path)
        assert (args[0], done.returncode, leaks(done.stdout + done.stderr)) == (args[0], 2, [])
        assert done.stderr.startswith("thyme: error: store URL: "), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
