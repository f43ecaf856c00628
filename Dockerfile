# Millrace gateway image (first version; issue 7 adds the multi-arch build, platform
# profiles and the Jetson base). Build:  docker build -t millrace .
# Run:    docker run -v $PWD/gateway.yaml:/config/gateway.yaml:ro -v millrace-data:/data \
#                    -p 8080:8080 millrace
# The config must set `api.host: 0.0.0.0` to be reachable from outside the container and
# `store.path: /data/millrace.db` so readings survive a container restart.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY drivers ./drivers
COPY sync ./sync
COPY simulators ./simulators
RUN python3 -m venv /opt/millrace \
 && /opt/millrace/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM ${BASE_IMAGE}
RUN groupadd --system millrace \
 && useradd --system --gid millrace --home-dir /data --shell /usr/sbin/nologin millrace \
 && mkdir -p /data /config && chown millrace:millrace /data
COPY --from=build /opt/millrace /opt/millrace
ENV PATH=/opt/millrace/bin:$PATH PYTHONUNBUFFERED=1
USER millrace
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)" || exit 1
ENTRYPOINT ["millrace"]
CMD ["run", "-c", "/config/gateway.yaml"]
