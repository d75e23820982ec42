"""Installed as a user installs it, and as the image is built: the wheel, a fresh virtualenv, a
JRE and nothing else.

Built from this tree with ``python -m build`` (the sdist, then the wheel from it), installed with pip (not editable, nothing of the source tree on the path);
``thyme kinesis install-jars --into DIR`` fetches the pinned daemon classpath from Maven Central
and ``--verify`` checks it, as the Dockerfile's build stage does; then, with the image's
``THYME_KCL_CLASSPATH=DIR`` and ``THYME_KCL_AUTO_INSTALL=0``, a consumer runs against the local
stack, serves a lookup and stops cleanly on SIGTERM. (The fetch on a first ``run`` without
install-jars: ``tests/test_jars.py``, over real HTTP.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import streams

from tests.e2e.harness import REPO, events, produce, unique, write_app
from thyme.kinesis import jars

INSTALL_TIMEOUT_S = 900


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_wheel_in_a_fresh_virtualenv_fetches_its_jars_and_consumes(
    aws: dict[str, str], kinesis: Any, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "THYME_KCL_CLASSPATH")}
    # the sdist, then the wheel from the sdist: both must carry everything the launcher needs
    built = run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(REPO)],
        env,
        tmp_path,
        INSTALL_TIMEOUT_S,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("thyme_kinesis-*.whl")
    (sdist,) = (tmp_path / "dist").glob("thyme_kinesis-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    for needed in ("thyme/kinesis/kcl-classpath.lock", "thyme/kinesis/logback.xml", "record_processor/py.typed"):
        assert f"{sdist.name.removesuffix('.tar.gz')}/{needed}" in names
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], env, tmp_path).returncode == 0
    python, thyme = str(venv / "bin" / "python"), str(venv / "bin" / "thyme")
    installed = run([python, "-m", "pip", "install", "-q", str(wheel)], env, tmp_path, INSTALL_TIMEOUT_S)
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
    fetched = run([thyme, "kinesis", "install-jars", "--into", str(kcl)], env, tmp_path, INSTALL_TIMEOUT_S)
    assert (fetched.returncode, fetched.stdout) == (0, f"{kcl}\n"), fetched.stderr[-3000:]
    assert [json.loads(line)["message"] for line in fetched.stderr.splitlines()] == [
        "fetching the KCL classpath",
        "KCL classpath ready",
    ]
    verified = run([thyme, "kinesis", "install-jars", "--into", str(kcl), "--verify"], env, tmp_path)
    assert (verified.returncode, verified.stderr) == (0, "")
    env |= {"THYME_KCL_CLASSPATH": str(kcl), "THYME_KCL_AUTO_INSTALL": "0"}  # as the image runs

    stream = unique("e2e-wheel")
    arn = streams.create_stream(kinesis, stream, 1)
    sent = events(0, 20)
    produce(kinesis, stream, sent)
    app = write_app(tmp_path, arn)
    store = f"sqlite:///{tmp_path / 'thyme.db'}"
    log = tmp_path / "consumer.log"
    with log.open("wb") as out:
        consumer = subprocess.Popen(
            [thyme, "kinesis", "run", f"{app}:Clicks", "--store", store, "--application-name", unique("e2e-wheel")],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
    try:
        last = sent[-1]
        deadline = time.monotonic() + 240
        while True:
            found = run([thyme, "lookup", f"{app}:Clicks", last["user_id"], "--store", store], env, tmp_path)
            if found.returncode == 0 and json.loads(found.stdout)["n"] == last["n"]:
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
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line one JSON object
    messages = [line["message"] for line in lines if "message" in line]
    assert "fetching the KCL classpath" not in messages  # nothing downloaded at run time
    assert "shard handed over after a requested shutdown" in messages
    assert jars.verify(kcl, jars.read_lock()) == []
    assert not cache.exists()
