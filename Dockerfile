# syntax=docker/dockerfile:1
# The consumer image: `thyme kinesis run MODULE:DATASET` with the KCL MultiLangDaemon.
#
#   docker build -t thyme-kinesis .                        # the example app (examples/)
#   docker build --build-arg APP_DIR=myapp -t my-consumer . # your own dataset module(s)
#   docker run --rm -e MY_KINESIS_STREAM_ARN=... thyme-kinesis /app/app.py:ClickEvent
#
# The build installs the way a pip user does, the path CI proves on every change
# (tests/e2e/test_package_e2e.py): pip installs this package, then `thyme kinesis install-jars`
# fetches the daemon's pinned classpath (kcl-classpath.lock, every jar checked against its
# sha256) into /opt/kcl/lib and compiles our entry point beside it. No Maven; a JDK in the
# build stage only. No credentials are baked in: at run time the
# AWS SDKs use the task role (ECS), IRSA or Pod Identity (EKS). See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the Python environment and the KCL classpath ----------------------------------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# A JDK in this stage only: install-jars compiles the daemon's entry point (thyme/kinesis/java/,
# which sets KCL's leader-lock timing) into /opt/kcl/lib; the runtime stage needs a JRE alone.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/thyme
COPY pyproject.toml README.md ./
COPY thyme/ thyme/
COPY record_processor/ record_processor/
RUN /opt/thyme/bin/python -m pip install --no-cache-dir ".[postgres]" \
    && /opt/thyme/bin/thyme kinesis install-jars --into /opt/kcl/lib \
    && /opt/thyme/bin/thyme kinesis install-jars --into /opt/kcl/lib --verify

# ---- runtime: headless JRE + the venv, non-root --------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# /usr/share/man/man1 must exist for the JRE's postinst on slim images.
# hadolint ignore=DL3008
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin thyme \
    && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /opt/thyme /opt/thyme
COPY --from=build /opt/kcl/lib /opt/kcl/lib
ARG APP_DIR=examples
COPY ${APP_DIR}/ /app/
ENV PATH=/opt/thyme/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    THYME_KCL_CLASSPATH=/opt/kcl/lib \
    THYME_KCL_AUTO_INSTALL=0 \
    THYME_STORE_URL=sqlite:////data/thyme.db
WORKDIR /app
USER 10001:10001
# The daemon has no health endpoint: healthy while its JVM runs (the launcher restarts it
# after a crash and exits after repeated failures). ECS and Kubernetes use their own copy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "grep -qs '[M]ultiLangDaemon' /proc/[0-9]*/cmdline"]
# tini is PID 1: it reaps orphans and passes SIGTERM to the launcher only (no -g), which
# forwards it to the JVM alone, so every shard's processor checkpoints before the exit.
ENTRYPOINT ["/usr/bin/tini", "--", "thyme", "kinesis", "run"]
CMD ["/app/app.py:ClickEvent"]
