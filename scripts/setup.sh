#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine, idempotently:
#   - a virtualenv in .venv (Python >= 3.11),
#   - the KCL MultiLangDaemon classpath (.kcl/lib, via Maven) and amazon-kclpy (scripts/setup_kcl.sh),
#   - the PostgreSQL server binaries (Debian's postgresql, when missing and running as root),
#   - this package with its development extras (psycopg included), editable,
#   - LocalStack for the local stack's "localstack" engine, in its own virtualenv
#     (.local-aws/localstack-venv, pinned by scripts/localstack-requirements.txt) with the
#     kinesis-mock it runs (.local-aws/localstack-node, from the npm registry, locked).
# A second run with nothing changed does no network work.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
VENV="$REPO_ROOT/.venv"
log() { echo "setup: $*" >&2; }

pick_python() {
    for candidate in "${THYME_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return
        fi
    done
    log "no Python >= 3.11 found; install one (or set THYME_PYTHON)"
    exit 1
}

# The PostgreSQL server binaries: the tests start a throwaway server (tests/pg_server.py).
have_initdb() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}
if ! have_initdb; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing PostgreSQL from Debian (the tests start their own server)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    have_initdb || {
        log "PostgreSQL's initdb was not found (on PATH or in /usr/lib/postgresql/*/bin); the tests need it:"
        log "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql, as root)"
        exit 1
    }
fi

for tool in java mvn; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool is required (a JDK >= 11 and Maven) for the KCL daemon"; exit 1; }
done

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$(pick_python)" -m venv "$VENV"
fi
PY="$VENV/bin/python"

PYTHON="$PY" "$REPO_ROOT/scripts/setup_kcl.sh"

stamp="$VENV/.thyme-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing thyme-kinesis and its development tools into .venv"
    "$PY" -m pip install -q -e ".[dev]" >&2
    echo "$want" >"$stamp"
else
    log ".venv up to date"
fi

# The LocalStack engine's own virtualenv and kinesis-mock (tests/e2e/test_localstack_e2e.py,
# scripts/demo --localstack): made on the first run (~30 s), then only checked against a stamp.
"$PY" "$REPO_ROOT/scripts/local_aws.py" install --engine localstack
