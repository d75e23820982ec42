#!/usr/bin/env bash
# Prepare everything needed to run the KCL MultiLangDaemon with our Python
# record processor.  Idempotent and cached, so it is cheap to call from CI and
# from dev scripts before every run.
#
#   a. Java side: resolve the daemon's runtime classpath (declared in pom.xml)
#      into .kcl/lib/.  Skipped when .kcl/lib was built from the same pom.xml
#      (sha256 stamp), so a second run does not start Maven or touch the network.
#   b. Python side: install amazon-kclpy into $PYTHON (default: python3).
#      Skipped when the right version is already importable.
#
# Usage:  scripts/setup_kcl.sh            # set up (no-op when up to date)
#         scripts/setup_kcl.sh --check    # exit 0 if up to date, 1 if not; changes nothing
#
# Then run the daemon with:
#   java -Dlogback.configurationFile=thyme/kinesis/logback.xml -cp ".kcl/lib/*" \
#        software.amazon.kinesis.multilang.MultiLangDaemon \
#        --properties-file <app>.properties --log-configuration thyme/kinesis/logback.xml
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$REPO_ROOT/pom.xml"
KCL_DIR="$REPO_ROOT/.kcl"
LIB_DIR="$KCL_DIR/lib"
STAMP="$KCL_DIR/lib.pom.sha256"

PYTHON="${PYTHON:-python3}"
# Why 3.1.3 and not the newest (3.2.0): kclpy's build downloads the exact jars
# listed in its own pom.xml, and 3.2.0 lists KCL 3.5.3, which the Maven Central
# we can reach does not serve (404), so 3.2.0 cannot be built here.  3.1.3's
# Python modules are byte-identical to 3.2.0's, and it pins KCL 3.1.3, the same
# daemon version as our pom.xml.
KCLPY_VERSION="${KCLPY_VERSION:-3.1.3}"

# One local Maven repository for both mvn calls below; it is also where kclpy's
# build reads its jars from (file:// URL), so pin it instead of guessing what a
# settings.xml might say.
M2_REPO="${M2_REPO:-$HOME/.m2/repository}"
MVN=(mvn -q -B -Dstyle.color=never "-Dmaven.repo.local=$M2_REPO")
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

log() { echo "setup_kcl: $*" >&2; }

pom_sha() { sha256sum "$POM" | cut -d' ' -f1; }

classpath_up_to_date() {
    [[ -f "$STAMP" && -d "$LIB_DIR" ]] && [[ "$(cat "$STAMP")" == "$(pom_sha)" ]]
}

kclpy_up_to_date() {
    "$PYTHON" - "$KCLPY_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
import amazon_kclpy.kcl  # noqa: F401  (must import, not just be listed)
sys.exit(version("amazon-kclpy") != sys.argv[1])
EOF
}

# --- a. daemon classpath -> .kcl/lib ------------------------------------------
setup_classpath() {
    if classpath_up_to_date; then
        log ".kcl/lib up to date ($(ls "$LIB_DIR" | wc -l) jars)"
        return
    fi
    # Build into a fresh temp dir and swap it in, so jars from an older pom never
    # linger and an interrupted run never leaves a half-filled lib behind a stamp.
    mkdir -p "$KCL_DIR"
    local tmp="$KCL_DIR/lib.tmp"
    rm -rf "$tmp"
    "${MVN[@]}" -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >&2  # mvn prints errors on stdout
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    pom_sha >"$STAMP"
    log "resolved .kcl/lib: $(ls "$LIB_DIR" | wc -l) jars, $(du -sh "$LIB_DIR" | cut -f1)"
}

# --- b. amazon-kclpy -> $PYTHON -----------------------------------------------
# kclpy's setup.py downloads ~80 jars listed in its own pom.xml with plain urllib
# while building its wheel (no retries; rate limits and partial downloads are its
# best-known install failure).  Instead we let Maven fetch exactly those jars
# into the local Maven repo (retries, checksums, cache shared with step a) and
# point the build at it via KCL_MVN_REPO_SEARCH_URL.
setup_kclpy() {
    if kclpy_up_to_date; then
        log "amazon-kclpy $KCLPY_VERSION already installed in $PYTHON"
        return
    fi
    tmp="$(mktemp -d)"           # global on purpose: the EXIT trap needs it
    trap 'rm -rf "$tmp"' EXIT

    "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
        -d "$tmp" "amazon-kclpy==$KCLPY_VERSION" >&2
    local sdist
    sdist="$(ls "$tmp"/amazon*kclpy-"$KCLPY_VERSION".tar.gz)"
    tar -xzf "$sdist" -C "$tmp"

    # kclpy's pom.xml is only a flat jar list (no project coordinates), so mvn
    # cannot use it directly.  Give it coordinates and exclude all transitive
    # dependencies: we want exactly the jars setup.py will ask for, no more.
    "$PYTHON" - "$tmp"/amazon*kclpy-"$KCLPY_VERSION"/pom.xml "$tmp/pom.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
NS = "http://maven.apache.org/POM/4.0.0"
ET.register_namespace("", NS)
tree = ET.parse(sys.argv[1])
root = tree.getroot()
for i, (tag, text) in enumerate([("groupId", "local.thyme"),
                                  ("artifactId", "kclpy-jars"),
                                  ("version", "0"), ("packaging", "pom")]):
    el = ET.Element(f"{{{NS}}}{tag}")
    el.text = text
    root.insert(1 + i, el)  # right after <modelVersion>
for dep in root.iter(f"{{{NS}}}dependency"):
    for old in dep.findall(f"{{{NS}}}exclusions"):
        dep.remove(old)
    excl = ET.SubElement(ET.SubElement(dep, f"{{{NS}}}exclusions"), f"{{{NS}}}exclusion")
    ET.SubElement(excl, f"{{{NS}}}groupId").text = "*"
    ET.SubElement(excl, f"{{{NS}}}artifactId").text = "*"
tree.write(sys.argv[2], xml_declaration=True, encoding="utf-8")
EOF
    "${MVN[@]}" -f "$tmp/pom.xml" "$DEP_PLUGIN:resolve" >&2

    KCL_MVN_REPO_SEARCH_URL="file://$M2_REPO/" \
        "$PYTHON" -m pip install -q "$sdist" >&2
    kclpy_up_to_date || { log "amazon-kclpy install did not take effect"; exit 1; }
    log "installed amazon-kclpy $KCLPY_VERSION into $PYTHON"
}

if [[ "${1:-}" == "--check" ]]; then
    ok=0
    classpath_up_to_date || { log ".kcl/lib missing or stale"; ok=1; }
    kclpy_up_to_date || { log "amazon-kclpy $KCLPY_VERSION not importable by $PYTHON"; ok=1; }
    exit "$ok"
fi

setup_classpath
setup_kclpy
