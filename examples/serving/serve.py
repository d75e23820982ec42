"""A threaded HTTP service answering feature lookups from the Thyme store.

    GET /clicks?user_id=u1&user_id=u2[&at=2024-05-01T12:00:00Z]
    → {"u1": {"user_id": "u1", "page": "/cart", "timestamp": "…"}, "u2": null}

Run it with the standard library (``python examples/serving/serve.py --port 8000``) or any WSGI
server with threads (``gunicorn --threads 8 --chdir examples/serving serve:app``). The store is
``THYME_STORE_URL`` (default ``sqlite:///thyme.db``); the stream's settings are not needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from clicks import ClickEvent

from thyme import ThymeError, lookup_many

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """One WSGI request: every ``user_id`` looked up in one read of the store."""
    if environ.get("PATH_INFO") != "/clicks":
        return _reply(start_response, "404 Not Found", {"error": "only /clicks here"})
    query = parse_qs(environ.get("QUERY_STRING", ""))
    keys = query.get("user_id", [])
    try:
        at = datetime.fromisoformat(query["at"][0]) if "at" in query else None
        rows = lookup_many(ClickEvent, keys, at=at)
    except (ValueError, ThymeError) as exc:  # a bad ?at= or key: the caller's mistake, said in one line
        return _reply(start_response, "400 Bad Request", {"error": str(exc)})
    return _reply(
        start_response, "200 OK", {k: None if r is None else r.as_dict() for k, r in zip(keys, rows, strict=True)}
    )


def _reply(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """The standard library's WSGI server, one thread per request."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with make_server(args.host, args.port, app, ThreadingWSGIServer, QuietHandler) as server:
        sys.stderr.write(f"serving lookups on http://{args.host}:{server.server_port}/clicks\n")
        sys.stderr.flush()
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
