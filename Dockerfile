# syntax=docker/dockerfile:1
# monolake with its native parts (the libnghttp2 HTTP/2 codec, the io_uring loop).
#
#   docker build -t monolake .
#   docker run --rm -p 8080:8080 -v "$PWD/monolake.toml:/etc/monolake/monolake.toml:ro" monolake
#
# Stage 1 builds the wheels (monolake's against the -dev headers, and every
# dependency's); stage 2 installs them offline next to the runtime libraries only.
# See docs/deploy.md.

ARG PYTHON_VERSION=3.11
ARG DEBIAN=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN} AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config libnghttp2-dev liburing-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE CHANGELOG.md ./
COPY examples ./examples
COPY src ./src
# MONOLAKE_REQUIRE_NATIVE=1: a native module that cannot be built fails the build (no silent pure wheel).
RUN MONOLAKE_REQUIRE_NATIVE=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-${DEBIAN}
LABEL org.opencontainers.image.title="monolake" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnghttp2-14 liburing2 \
 && rm -rf /var/lib/apt/lists/*
# Offline, from the wheels built above (their versions were resolved there).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels monolake \
 && python -c "import monolake.core.proto.http2._nghttp2, monolake.core.runtime._uring, monolake.core.proto.http1._h1req"
# The starter config, listening on all interfaces: replace it by mounting your own.
RUN mkdir -p /etc/monolake \
 && monolake init /etc/monolake/monolake.toml \
 && sed -i 's/listener = "127.0.0.1:8080"/listener = "0.0.0.0:8080"/' /etc/monolake/monolake.toml \
 && monolake check -c /etc/monolake/monolake.toml \
 && groupadd --system --gid 10001 monolake \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin monolake
# Numeric, so runAsNonRoot-style checks can verify it without the image's passwd file.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
# SIGTERM: stop accepting, drain ([runtime] drain_timeout), exit 0. SIGHUP: reload the config.
STOPSIGNAL SIGTERM
CMD ["monolake", "run", "-c", "/etc/monolake/monolake.toml"]
