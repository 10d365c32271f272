#!/usr/bin/env bash
# Build the images compose/docker-compose.yml runs, without pulling anything from a registry:
#
#   scripts/images.sh [--ca] [base|kafka|streamrl|all]    (default: all)
#
#   base      streamrl/debian:bookworm   debootstrap --variant=minbase from the Debian mirror apt
#                                        uses here, imported with `docker import` (~1.5 min)
#   kafka     streamrl/kafka:local       Java 17 from apt and the broker jars scripts/kafka.sh
#                                        fetches from Maven Central; reads the official image's
#                                        KAFKA_* environment
#   streamrl  streamrl:local             compose/Dockerfile on the base, torch from PyPI
#
# --ca: trust the host's extra CA certificates (/usr/local/share/ca-certificates/*.crt) inside the
# images, for machines whose HTTPS goes through a proxy with its own CA (apt, pip, Java).
# An image that exists is kept (base, kafka) or rebuilt from docker's layer cache (streamrl), so a
# second run takes seconds. Then: `eval "$(scripts/images.sh env)"; streamrl up`.
#
# Environment: STREAMRL_DEBIAN_MIRROR [the first deb.debian.org-style URI apt uses, else
# http://deb.debian.org/debian], STREAMRL_IMAGES_REBUILD=1 rebuilds base and kafka too.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
BASE=streamrl/debian:bookworm
KAFKA=streamrl/kafka:local
STREAMRL=streamrl:local
KAFKA_VERSION="${STREAMRL_KAFKA_VERSION:-4.1.1}"
CACHE="${STREAMRL_CACHE:-$HOME/.cache/streamrl}"
REBUILD="${STREAMRL_IMAGES_REBUILD:-}"

say() { echo "images: $*"; }
die() { echo "images: error: $*" >&2; exit 1; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
# Quiet on success, the whole log on failure: a build's output is long.
quietly() {
    local log; log="$(mktemp)"
    "$@" >"$log" 2>&1 || { tail -n 60 "$log" >&2; rm -f "$log"; die "failed: $*"; }
    rm -f "$log"
}

mirror() {
    [[ -n "${STREAMRL_DEBIAN_MIRROR:-}" ]] && { echo "$STREAMRL_DEBIAN_MIRROR"; return; }
    local uri
    uri="$(grep -hoE '^(URIs:|deb) +[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | awk '{print $2}' | head -n1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}

ca_dir() { echo "$ROOT/compose/images/ca"; }
copy_ca() {
    rm -f "$(ca_dir)"/*.crt
    if [[ -n "$CA" ]]; then
        cp /usr/local/share/ca-certificates/*.crt "$(ca_dir)/" 2>/dev/null \
            || die "--ca: no certificates in /usr/local/share/ca-certificates"
    fi
}

build_base() {
    if have "$BASE" && [[ -z "$REBUILD" ]]; then say "$BASE exists"; return; fi
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    local t0=$SECONDS root
    root="$(mktemp -d)"
    quietly debootstrap --variant=minbase bookworm "$root" "$(mirror)"
    tar -C "$root" -c . | docker import - "$BASE" >/dev/null
    rm -rf "$root"
    say "$BASE built in $((SECONDS - t0)) s"
}

build_kafka() {
    if have "$KAFKA" && [[ -z "$REBUILD" ]]; then say "$KAFKA exists"; return; fi
    local libs="$CACHE/kafka/$KAFKA_VERSION/libs" t0=$SECONDS ctx
    [[ -f "$libs/.complete" ]] || quietly "$HERE/kafka.sh" install
    ctx="$(mktemp -d)"
    cp -r "$libs" "$ctx/libs"
    cp "$HERE/kafka/log4j2.properties" "$ROOT/compose/images/kafka-entrypoint.sh" \
        "$ROOT/compose/images/kafka-broker-api-versions.sh" "$ctx/"
    mkdir "$ctx/ca" && cp "$(ca_dir)"/*.crt "$ctx/ca/" 2>/dev/null || true
    quietly docker build -t "$KAFKA" --build-arg STREAMRL_BASE_IMAGE="$BASE" \
        -f "$ROOT/compose/images/kafka.Dockerfile" "$ctx"
    rm -rf "$ctx"
    say "$KAFKA built in $((SECONDS - t0)) s"
}

build_streamrl() {
    local t0=$SECONDS
    quietly docker build -t "$STREAMRL" --build-arg STREAMRL_BASE_IMAGE="$BASE" \
        --build-arg TORCH_INDEX_URL= -f "$ROOT/compose/Dockerfile" "$ROOT"
    say "$STREAMRL built in $((SECONDS - t0)) s"
}

CA=""
[[ "${1:-}" == "--ca" ]] && { CA=1; shift; }
what="${1:-all}"
if [[ "$what" == env ]]; then
    # what compose/docker-compose.yml reads to run on these images
    echo "export STREAMRL_KAFKA_IMAGE=$KAFKA STREAMRL_IMAGE=$STREAMRL STREAMRL_BASE_IMAGE=$BASE STREAMRL_TORCH_INDEX_URL="
    exit 0
fi
command -v docker >/dev/null || die "no docker command (apt-get install docker.io; start dockerd)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd)"
# One build at a time: a second call (the compose test, while CI builds in the background) waits
# for the first and then finds its images.
exec 9>"${TMPDIR:-/tmp}/streamrl-images.lock"
flock 9
copy_ca
case "$what" in
    base) build_base ;;
    kafka) build_base; build_kafka ;;
    streamrl) build_base; build_streamrl ;;
    all) build_base; build_kafka; build_streamrl ;;
    *) die "unknown target $what (base, kafka, streamrl, all, env)" ;;
esac
