"""The demo: a local AWS stack, a 2-shard stream, click events in, the real consumer, lookups out.

Run it with ``scripts/demo`` (which sets everything up first). It starts kinesis-mock and
moto on 127.0.0.1 (with ``--localstack`` or ``THYME_LOCAL_AWS_ENGINE=localstack``: LocalStack
for Kinesis and STS, moto for DynamoDB), creates a stream, produces a few thousand click events (some invalid,
some late), runs ``thyme kinesis run examples/app.py:ClickEvent`` unchanged against it,
shows progress until the consumer has caught up, prints lookups and the dead letters by
reason, and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import local_aws  # noqa: E402
import streams  # noqa: E402

USERS = 50
EVENTS = 3000
PAGES = ["/", "/search", "/product/42", "/cart", "/checkout", "/help"]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_events(rng: random.Random) -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """Click events in event-time order, with a few invalid and late ones mixed in."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    payloads: list[tuple[str, bytes]] = []
    expected: Counter[str] = Counter()
    for n in range(EVENTS):
        user = f"user-{rng.randrange(USERS)}"
        at = start + timedelta(milliseconds=600 * n)
        event: dict[str, object] = {"user_id": user, "page": rng.choice(PAGES), "timestamp": at.isoformat()}
        roll = rng.random()
        if roll < 0.01:
            payloads.append((user, b'{"user_id": "' + user.encode() + b'", "page": '))  # truncated JSON
            expected["invalid_json"] += 1
            continue
        if roll < 0.02:
            event["timestamp"] = at.replace(tzinfo=None).isoformat()  # no zone
            expected["schema: timestamp"] += 1
        elif roll < 0.03:
            event["page"] = 404
            expected["schema: page"] += 1
        elif roll < 0.05 and n > 500:
            event["timestamp"] = (at - timedelta(minutes=20)).isoformat()  # behind the 5m lateness bound
            expected["late"] += 1
        else:
            expected["applied"] += 1
        payloads.append((user, json.dumps(event).encode()))
    return payloads, expected


def progress(store: Path, total: int) -> tuple[int, Counter[str]]:
    import sqlite3

    if not store.exists():
        return 0, Counter()
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        applied = db.execute("SELECT coalesce(sum(applied), 0) FROM thyme_shards").fetchone()[0]
        reasons = Counter(
            {r: int(c) for r, c in db.execute("SELECT reason, count(*) FROM thyme_dead_letters GROUP BY reason")}
        )
    except sqlite3.OperationalError:
        return 0, Counter()
    finally:
        db.close()
    return int(applied), reasons


STACKS = {
    local_aws.KINESIS_MOCK_ENGINE: "kinesis-mock for Kinesis, moto for DynamoDB and STS",
    local_aws.LOCALSTACK_ENGINE: f"LocalStack {local_aws.LOCALSTACK_VERSION} for Kinesis and STS, moto for DynamoDB",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--localstack",
        action="store_true",
        help=f"run the local stack on LocalStack (default: ${local_aws.ENGINE_ENV}, else kinesis-mock)",
    )
    args = parser.parse_args(argv)
    try:
        engine = local_aws.engine_from_env(local_aws.LOCALSTACK_ENGINE if args.localstack else None)
    except local_aws.LocalAWSError as exc:
        parser.error(str(exc))
    work = Path(tempfile.mkdtemp(prefix="thyme-demo-"))
    store = work / "thyme.db"
    began = time.monotonic()
    say(f"Thyme KinesisSource demo (working folder {work})")
    say(f"1. starting the local AWS stack: {STACKS[engine]}, on 127.0.0.1")
    stack = local_aws.LocalAWS(state_dir=work / "aws", engine=engine)
    try:
        stack.start()
    except local_aws.LocalAWSError as exc:
        say(f"the local AWS stack did not start: {exc}")
        return 1
    consumer: subprocess.Popen[bytes] | None = None
    try:
        os.environ.update(stack.env())
        kinesis = streams.kinesis_client()
        stream = f"clicks-{int(time.time())}"
        arn = streams.create_stream(kinesis, stream, 2)
        say(f"2. created the 2-shard stream {arn}")
        payloads, expected = make_events(random.Random(7))  # noqa: S311 - demo data
        streams.put_payloads(kinesis, stream, payloads)
        say(
            f"3. produced {len(payloads)} click events ({sum(expected.values()) - expected['applied']} invalid or late)"
        )

        env = {
            **os.environ,
            "MY_KINESIS_STREAM_ARN": arn,
            # examples/app.py reads the role through Secret(env=...): the Kinesis client assumes it (the stack's STS)
            "MY_KINESIS_ROLE_ARN": "arn:aws:iam::123456789012:role/thyme-demo-reader",
        }
        thyme = str(Path(sys.executable).with_name("thyme"))
        log = work / "consumer.log"
        command = [thyme, "kinesis", "run", "examples/app.py:ClickEvent", "--store", f"sqlite:///{store}"]
        say(f"4. running: {' '.join(command[:4])} --store sqlite:///{store}   (daemon log: {log})")
        with log.open("wb") as out:
            consumer = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
        started = time.monotonic()
        total = len(payloads)
        tty = sys.stdout.isatty()
        last_line = ""
        while True:
            applied, dead = progress(store, total)
            rejected = sum(dead.values())
            done = applied + rejected
            elapsed = time.monotonic() - started
            line = f"   caught up {done}/{total} records ({applied} applied, {rejected} dead letters), {elapsed:.0f}s"
            if tty:
                sys.stdout.write("\r" + line)
                sys.stdout.flush()
            elif line.split(",", maxsplit=1)[0] != last_line.split(",", maxsplit=1)[0]:
                say(line)
            last_line = line
            if done >= total:
                break
            if consumer.poll() is not None:
                say(f"\nthe consumer exited with status {consumer.returncode}; see {log}")
                return 1
            if time.monotonic() - started > 150:
                say(f"\nthe consumer did not catch up within 150 s; see {log}")
                return 1
            time.sleep(1)
        if tty:
            say("")
        say(f"5. the consumer caught up in {time.monotonic() - started:.1f}s")

        say("6. lookups (thyme lookup examples/app.py:ClickEvent KEY):")
        keys = ["user-1", "user-2", "user-3", "nobody"]
        result = subprocess.run(
            [thyme, "lookup", "examples/app.py:ClickEvent", *keys, "--store", f"sqlite:///{store}"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        for key, row in zip(keys, json.loads(result.stdout), strict=True):
            say(f"   {key:8} -> {json.dumps(row)}")
        status = subprocess.run(
            [thyme, "kinesis", "status", "examples/app.py:ClickEvent", "--store", f"sqlite:///{store}"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        say("   thyme kinesis status examples/app.py:ClickEvent (lease table + store, per shard):")
        for text in status.stdout.splitlines()[:3]:
            say("   " + text)
        _, dead = progress(store, total)
        say("7. dead letters by reason (thyme kinesis dead-letters list|redrive to inspect and replay them):")
        for reason, count in sorted(dead.items()):
            say(f"   {count:5}  {reason}")
        applied, _ = progress(store, total)
        grouped = Counter(
            {("schema: " + r[8:].split(":")[0]) if r.startswith("schema: ") else r: c for r, c in dead.items()}
        )
        grouped["applied"] = applied
        if grouped != expected:
            say(f"MISMATCH: expected {dict(expected)}, store has {dict(grouped)}")
            return 1
        say(f"   every record is accounted for: {applied} applied once, {sum(dead.values())} dead letters")
    finally:
        if consumer is not None and consumer.poll() is None:
            say("8. stopping the consumer (SIGTERM: shards checkpoint, then the daemon exits) and the local stack")
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(60)
            except subprocess.TimeoutExpired:
                consumer.kill()
        stack.stop()
    say(f"done in {time.monotonic() - began:.0f}s")
    say(f"the working folder {work} is kept: the store (thyme.db), the consumer's log (consumer.log) and")
    say(f"the local stack's logs (aws/); look inside, or remove it with: rm -rf {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
