"""Installed as a user installs it, and as the image is built: the wheel, a fresh virtualenv, a
JRE and nothing else; then upgraded as the README says.

First the previous release (the ``v0.1.0`` tag, built from ``git archive``) is installed and
consumes a stream into a store; then this tree, built with ``python -m build`` (the sdist, then
the wheel from it), is installed over it with ``pip install -U`` (not editable, nothing of the
source tree on the path) and carries on from the same store: every record once across the
upgrade, the old release's dead letters still there.
``thyme kinesis install-jars --into DIR`` fetches the pinned daemon classpath from Maven Central
(and, for this release, compiles the daemon's entry point beside it) and ``--verify`` checks it,
as the Dockerfile's build stage does, again after the upgrade as a rebuilt image would; then, with the image's
``THYME_KCL_CLASSPATH=DIR`` and ``THYME_KCL_AUTO_INSTALL=0``, a consumer runs against the local
stack, serves a lookup and stops cleanly on SIGTERM. (The fetch on a first ``run`` without
install-jars: ``tests/test_jars.py``, over real HTTP.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import REPO, events, produce, unique, write_app
from thyme.kinesis import jars

INSTALL_TIMEOUT_S = 900


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


PREVIOUS = ("v0.1.0", "2c53c4e9a8da156df604b16c852ca783c4e896b8")
"""The release the upgrade starts from: its tag, and the commit it tags (for a clone without tags)."""


def consume(
    thyme: str, env: dict[str, str], cwd: Path, app: Path, store: str, application: str, until: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run a consumer until a lookup sees ``until`` (the last record put), SIGTERM it; its log lines."""
    log = cwd / f"consumer-{application}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        consumer = subprocess.Popen(
            [thyme, "kinesis", "run", f"{app}:Clicks", "--store", store, "--application-name", application],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            found = run([thyme, "lookup", f"{app}:Clicks", until["user_id"], "--store", store], env, cwd)
            if found.returncode == 0 and json.loads(found.stdout)["n"] == until["n"]:
                break
            assert consumer.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(90) == 0, log.read_text()[-4000:]
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    return [json.loads(line) for line in log.read_text().splitlines()]  # every line one JSON object


def install_jars(thyme: str, kcl: Path, env: dict[str, str], cwd: Path) -> None:
    """``install-jars --into kcl`` (it fetches what is missing), then ``--verify``, as the image build does."""
    fetched = run([thyme, "kinesis", "install-jars", "--into", str(kcl)], env, cwd, INSTALL_TIMEOUT_S)
    assert (fetched.returncode, fetched.stdout) == (0, f"{kcl}\n"), fetched.stderr[-3000:]
    assert [json.loads(line)["message"] for line in fetched.stderr.splitlines()] == [
        "fetching the KCL classpath",
        "KCL classpath ready",
    ]
    verified = run([thyme, "kinesis", "install-jars", "--into", str(kcl), "--verify"], env, cwd)
    assert (verified.returncode, verified.stderr) == (0, "")


def test_the_wheel_in_a_fresh_virtualenv_fetches_its_jars_and_consumes_then_upgrades(
    aws: dict[str, str], kinesis: Any, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "THYME_KCL_CLASSPATH")}
    # the previous release, from its tag
    previous_src = tmp_path / "previous-src"
    previous_src.mkdir()
    for ref in PREVIOUS:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref], capture_output=True, check=False
        )
        if archive.returncode == 0:
            break
    assert archive.returncode == 0, (
        f"cannot read release {PREVIOUS[0]} ({archive.stderr.decode(errors='replace').strip()}): "
        "the test needs the repository's history (not a shallow clone)"
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(previous_src, filter="data")
    built_previous = run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist-previous"), str(previous_src)],
        env,
        tmp_path,
        INSTALL_TIMEOUT_S,
    )
    assert built_previous.returncode == 0, built_previous.stderr[-3000:]
    (previous_wheel,) = (tmp_path / "dist-previous").glob("thyme_kinesis-*.whl")
    # this tree: the sdist, then the wheel from the sdist: both must carry everything the launcher needs
    built = run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(REPO)],
        env,
        tmp_path,
        INSTALL_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("thyme_kinesis-*.whl")
    (sdist,) = (tmp_path / "dist").glob("thyme_kinesis-*.tar.gz")
    with tarfile.open(sdist) as archived:
        names = archived.getnames()
    for needed in ("thyme/kinesis/kcl-classpath.lock", "thyme/kinesis/logback.xml", "record_processor/py.typed"):
        assert f"{sdist.name.removesuffix('.tar.gz')}/{needed}" in names
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], env, tmp_path).returncode == 0
    python, thyme = str(venv / "bin" / "python"), str(venv / "bin" / "thyme")
    installed = run([python, "-m", "pip", "install", "-q", str(previous_wheel)], env, tmp_path, INSTALL_TIMEOUT_S)
    assert installed.returncode == 0, installed.stderr[-3000:]

    where = run(
        [python, "-c", "import thyme, record_processor; print(thyme.__file__); print(record_processor.__file__)"],
        env,
        tmp_path,
    )
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout  # not the source tree
    cache = tmp_path / "empty-cache"
    env |= {"THYME_KCL_CACHE": str(cache), "PATH": f"{venv / 'bin'}:{env['PATH']}"}
    version = run([thyme, "--version"], env, tmp_path)
    assert version.stdout.startswith(
        f"thyme-kinesis 0.1.0; KCL MultiLangDaemon 3.1.3 (pinned; not installed in {cache})"
    )
    kcl = tmp_path / "opt-kcl-lib"
    install_jars(thyme, kcl, env, tmp_path)
    env |= {"THYME_KCL_CLASSPATH": str(kcl), "THYME_KCL_AUTO_INSTALL": "0"}  # as the image runs

    stream = unique("e2e-wheel")
    arn = streams.create_stream(kinesis, stream, 1)
    application = unique("e2e-wheel")
    first = events(0, 20)
    produce(kinesis, stream, first[:10])
    produce(kinesis, stream, [("u1", b"{not json")])
    produce(kinesis, stream, first[10:])
    app = write_app(tmp_path, arn)
    store = f"sqlite:///{tmp_path / 'thyme.db'}"
    consume(thyme, env, tmp_path, app, store, application, first[-1])

    # the upgrade, as the README says: pip install -U; the same store, lease table and jars
    upgraded = run([python, "-m", "pip", "install", "-q", "-U", str(wheel)], env, tmp_path, INSTALL_TIMEOUT_S)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    version = run([thyme, "--version"], env, tmp_path)
    assert version.stdout.startswith("thyme-kinesis 0.2.0; KCL MultiLangDaemon 3.1.3"), version.stdout
    # this release pins other jars (KCL core 3.3.0) and an entry point: the image is built anew,
    # install-jars into the same folder fetches what changed and compiles the entry point
    install_jars(thyme, kcl, env, tmp_path)
    second = events(20, 20)
    produce(kinesis, stream, second)
    lines = consume(thyme, env, tmp_path, app, store, application, second[-1])
    messages = [line["message"] for line in lines if "message" in line]
    assert "fetching the KCL classpath" not in messages  # nothing downloaded at run time
    assert "shard handed over after a requested shutdown" in messages
    assert "leader lock lease 10000 ms, heartbeat 3333 ms" in messages  # our entry point ran the daemon
    assert jars.verify(kcl, jars.read_lock()) == []
    assert not cache.exists()

    db = sqlite3.connect(tmp_path / "thyme.db")
    try:
        applied = Counter(n for (n,) in db.execute("SELECT json_extract(row, '$.n') FROM ds_Clicks_v1"))
    finally:
        db.close()
    assert applied == Counter(range(40)), "every record once across the upgrade"
    listed = run([thyme, "kinesis", "dead-letters", f"{app}:Clicks", "--store", store], env, tmp_path)
    assert [json.loads(line)["payload"] for line in listed.stdout.splitlines()] == ["{not json"]
