#!/usr/bin/env bash
# Set up, start the local Kafka broker, and run the whole test suite against it.
#
#   scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/kafka.sh install
started_here=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
    scripts/kafka.sh start
    started_here=1
fi
trap '[ "$started_here" = 1 ] && scripts/kafka.sh stop >/dev/null 2>&1 || true' EXIT

.venv/bin/ruff check .

# The Kafka tests fail rather than skip when the broker is missing.
export STREAMRL_REQUIRE_KAFKA=1
.venv/bin/python -m pytest "$@"
