#!/usr/bin/env bash
# A Docker engine for the compose test (tests/launch/test_compose_engine.py) on a machine without
# one: installs Debian's docker.io, docker-compose (v1) and debootstrap when missing, and starts
# dockerd by hand (no systemd needed) unless an engine already answers. CI runs it (.ci/run);
# when it cannot (not root, no apt), it says why and the compose test skips.
#
#   scripts/docker-engine.sh          # then: docker info
set -uo pipefail

say() { echo "docker-engine: $*"; }

if docker info >/dev/null 2>&1; then
    say "an engine answers already ($(docker info --format '{{.ServerVersion}}'))"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    say "not root: cannot install or start dockerd; the compose test will skip"
    exit 0
fi
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/tmp/docker-engine-apt.log 2>&1; then
        apt-get update -q >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/tmp/docker-engine-apt.log 2>&1 \
            || { tail -n 20 /tmp/docker-engine-apt.log; say "apt-get failed; the compose test will skip"; exit 0; }
    fi
fi
log=/tmp/dockerd.log
setsid nohup dockerd >"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        say "dockerd $(docker info --format '{{.ServerVersion}}') started (log $log)"
        exit 0
    fi
    sleep 1
done
tail -n 20 "$log"
say "dockerd did not answer within 60 s; the compose test will skip"
exit 0
