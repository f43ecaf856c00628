# Millrace gateway image: one Dockerfile for linux/amd64 and linux/arm64 (Raspberry Pi 4/5,
# generic hosts) and, with build arguments, a Jetson variant on an L4T base.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t millrace .
#   make image        # here: buildah on a Debian bookworm base made with debootstrap
#
# Jetson Orin (JetPack 6): a base with L4T's CUDA/TensorRT libraries and Python >= 3.11, and
# onnxruntime-gpu built for that JetPack and Python, e.g.
#   --build-arg BASE_IMAGE=<l4t base with python3.11> --build-arg PYTHON=python3.11 \
#   --build-arg ONNXRUNTIME_PACKAGE=onnxruntime-gpu \
#   --build-arg PIP_EXTRA_INDEX_URL=<the index serving JetPack wheels>
# The Jetson platform profile then asks TensorRT > CUDA > CPU (firmware-configs/platforms/).
#
# Run:  docker run -v $PWD/gateway.yaml:/etc/millrace/gateway.yaml:ro -v millrace-data:/data \
#                  -e MILLRACE_API_HOST=0.0.0.0 -p 8080:8080 millrace
# The store is /data/millrace.db (MILLRACE_STORE_PATH). The API stays on the container's
# loopback unless the config or MILLRACE_API_HOST says otherwise; the HEALTHCHECK asks it there.
# Without a mounted file, MILLRACE_CONFIG_YAML (a balena fleet variable) holds the config.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -- build stage: a virtualenv with Millrace and its wheels --------------------------------
FROM ${BASE_IMAGE} AS build
ARG PYTHON=python3
ARG ONNXRUNTIME_PACKAGE=onnxruntime
ARG PIP_EXTRA_INDEX_URL=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY drivers ./drivers
COPY sync ./sync
COPY simulators ./simulators
COPY firmware-configs/platforms ./firmware-configs/platforms
COPY models ./models
# Wheels first (a dependency without an arm64 wheel is built here, where a compiler may be
# added, never in the runtime stage), then installed from that folder alone. The engine's
# built-in models go beside the packages (gateway.inference.config BUILTIN_MODELS): only
# manifests, ONNX files and model cards, not the training code. (A current pip and
# setuptools: balena-sdk's `ratelimit` is published as an sdist only.) Behind a TLS-inspecting
# proxy, pass its CA bundle as a build secret (--secret id=ca_bundle,src=...): it is used
# for pip here and never stored in a layer.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
 && ${PYTHON} -m venv /opt/millrace \
 && /opt/millrace/bin/pip install --upgrade pip setuptools wheel \
 && /opt/millrace/bin/pip wheel --wheel-dir /wheels . \
 && /opt/millrace/bin/pip install --no-index --find-links /wheels millrace \
 && if [ "${ONNXRUNTIME_PACKAGE}" != "onnxruntime" ]; then \
      /opt/millrace/bin/pip uninstall -y onnxruntime \
      && /opt/millrace/bin/pip install "${ONNXRUNTIME_PACKAGE}"; \
    fi \
 && site=$(/opt/millrace/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && for m in models/*/manifest.yaml; do \
      d=$(dirname "$m"); mkdir -p "$site/$d"; \
      cp "$d"/manifest.yaml "$d"/*.onnx "$d"/MODEL_CARD.md "$site/$d/"; \
    done \
 && /opt/millrace/bin/python -c "import gateway.cli, onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())"

# -- runtime stage: the base, a system user and the virtualenv -----------------------------
FROM ${BASE_IMAGE}
ARG PYTHON=python3
RUN groupadd --system --gid 10001 millrace \
 && useradd --system --uid 10001 --gid millrace --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin millrace \
 && mkdir -p /data /etc/millrace \
 && chown millrace:millrace /data
COPY --from=build /opt/millrace /opt/millrace
ENV PATH=/opt/millrace/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/data \
    MILLRACE_STORE_PATH=/data/millrace.db
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/millrace/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MILLRACE_API_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["/opt/millrace/bin/millrace"]
CMD ["run", "-c", "/etc/millrace/gateway.yaml"]
