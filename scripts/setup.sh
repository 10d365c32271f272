#!/usr/bin/env bash
# Set up a development environment in .venv (Python >= 3.11): streamrl in editable mode with its
# dependencies and the dev tools. Safe to run again: it reinstalls only when pyproject.toml or
# setup.py changed.
#
#   scripts/setup.sh            # then: .venv/bin/streamrl --help
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "streamrl needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=..." >&2
    exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.streamrl-installed
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing streamrl and its dependencies into .venv (torch is large: the first time takes minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    # One install resolves everything, so pip never pulls a second torch over a CPU build that a
    # configured find-links directory provides.
    .venv/bin/python -m pip install -q -e ".[dev]"
    # The checkout itself on sys.path: recipes and packages added after this install import too
    # (setuptools' editable finder only knows the packages that existed when it ran).
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    pwd > "$site/streamrl-checkout.pth"
    echo "$want" > "$stamp"
fi
