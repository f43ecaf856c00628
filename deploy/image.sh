#!/usr/bin/env bash
# `make image`: build the gateway image with buildah on a Debian bookworm base made here with
# debootstrap (no image registry is needed), start it, and check that /health answers.
#
#   1. base:  debootstrap bookworm (+ python3, python3-venv) -> rootfs tarball -> image
#             localhost/millrace-base:bookworm (FROM scratch, ADD the tarball)
#   2. build: buildah bud --build-arg BASE_IMAGE=localhost/millrace-base:bookworm
#   3. run:   the container with a small config (no devices), API on loopback, and
#             /health asked from inside the container, as the image's HEALTHCHECK does.
#
# Storage: vfs (no overlay mounts needed), isolation: chroot (no user namespaces needed).
# Each step says exactly which command failed and why; nothing is retried silently.
set -euo pipefail

WORK=${MILLRACE_IMAGE_WORK:-/var/tmp/millrace-image}
BASE=${MILLRACE_BASE_IMAGE:-localhost/millrace-base:bookworm}
TAG=${MILLRACE_IMAGE_TAG:-localhost/millrace:dev}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PORT=${MILLRACE_IMAGE_PORT:-18080}
BUILDAH=(buildah --storage-driver vfs)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { printf 'make image: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

need_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || fail "apt-get install ${missing[*]} failed"
  fi
}

make_base() {
  if "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    say "base $BASE exists (remove it with: buildah --storage-driver vfs rmi $BASE)"
    return
  fi
  mkdir -p "$WORK"
  local rootfs="$WORK/rootfs"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs"
    say "debootstrap bookworm into $rootfs (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || fail "debootstrap failed; last lines of $WORK/debootstrap.log:
$(tail -n 15 "$WORK/debootstrap.log")"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  fi
  tar -C "$rootfs" --numeric-owner -cf "$WORK/rootfs.tar" .
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/usr/bin/python3"]\n' >"$WORK/Containerfile.base"
  say "importing the rootfs as $BASE"
  "${BUILDAH[@]}" bud --isolation chroot -f "$WORK/Containerfile.base" -t "$BASE" "$WORK" \
    >"$WORK/base-build.log" 2>&1 \
    || fail "buildah bud of the base failed:
$(tail -n 15 "$WORK/base-build.log")"
}

build_image() {
  say "building $TAG on $BASE (log: $WORK/build.log)"
  # The host's CA bundle (which trusts any TLS-inspecting proxy the host goes through) is
  # handed to pip as a build secret; it is not kept in the image.
  local ca=${MILLRACE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt} secret=()
  [ -s "$ca" ] && secret=(--secret "id=ca_bundle,src=$ca")
  "${BUILDAH[@]}" bud --isolation chroot --format docker --layers=false \
    --build-arg "BASE_IMAGE=$BASE" "${secret[@]}" -t "$TAG" -f "$ROOT/Dockerfile" "$ROOT" \
    >"$WORK/build.log" 2>&1 \
    || fail "buildah bud of the gateway failed:
$(tail -n 25 "$WORK/build.log")"
  "${BUILDAH[@]}" inspect --type image --format '{{.Docker.Config.Healthcheck}}' "$TAG" \
    | grep -q /health || fail "the image has no HEALTHCHECK on /health (built without --format docker?)"
}

run_and_check() {
  local cfg="$WORK/gateway.yaml" ctr log="$WORK/run.log"
  cat >"$cfg" <<YAML
gateway: {id: image-check, site: build-host}
api: {host: 127.0.0.1, port: $PORT}
YAML
  ctr=$("${BUILDAH[@]}" from "$TAG")
  # buildah run does not apply the image's USER and ENTRYPOINT by itself; give them.
  "${BUILDAH[@]}" run --isolation chroot --user 10001:10001 \
    -v "$cfg:/etc/millrace/gateway.yaml:ro" "$ctr" -- \
    /opt/millrace/bin/millrace run -c /etc/millrace/gateway.yaml >"$log" 2>&1 &
  local pid=$! ok=""
  for _ in $(seq 1 60); do
    if "${BUILDAH[@]}" run --isolation chroot --user 10001:10001 "$ctr" -- \
        /opt/millrace/bin/python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2).read().decode())" \
        >"$WORK/health.json" 2>/dev/null; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  "${BUILDAH[@]}" rm "$ctr" >/dev/null || true
  [ -n "$ok" ] || fail "the container did not answer /health; its output:
$(tail -n 25 "$log")"
  say "container answered /health: $(cat "$WORK/health.json")"
}

need_tools
make_base
build_image
run_and_check
say "OK: $TAG built on $BASE; /health answered"
