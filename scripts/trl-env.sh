#!/usr/bin/env bash
# TRL in a venv of its own, for bench/vs_trl.py: built once per machine, reused after.
#
#   scripts/trl-env.sh            # prints the venv's python; builds it the first time
#   "$(scripts/trl-env.sh)" -c 'import trl; print(trl.__version__)'
#
# The venv lives in ~/.cache/streamrl/trl-venv (STREAMRL_TRL_VENV), never in the checkout or a
# docker build context. It sees the project's .venv through a .pth line (site.addsitedir: the
# CPU torch, transformers, accelerate, datasets and streamrl itself are reused, not downloaded
# again); pip installs trl and only what .venv lacks into the venv's own site-packages, which
# come first on sys.path. trl is thereby no dependency of streamrl. Safe to run concurrently
# (flock) and again (a stamp names the trl version and the project venv it was built against).
# Fresh machine, after scripts/setup.sh: 36 s measured here (only the trl wheel is new).
set -euo pipefail
cd "$(dirname "$0")/.."

TRL_VERSION=${STREAMRL_TRL_VERSION:-1.16.0}
VENV=${STREAMRL_TRL_VENV:-$HOME/.cache/streamrl/trl-venv}
MAIN_PY=$PWD/.venv/bin/python
if [ ! -x "$MAIN_PY" ]; then
    echo "no project venv at .venv: run scripts/setup.sh first (TRL reuses its torch)" >&2
    exit 1
fi
main_site=$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
want="trl==$TRL_VERSION main=$main_site"

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [ "$(cat "$VENV/.streamrl-trl" 2>/dev/null)" != "$want" ]; then
    start=$(date +%s)
    echo "building the TRL venv in $VENV (trl $TRL_VERSION over the project's torch)" >&2
    rm -rf "$VENV"
    "$("$MAIN_PY" -c 'import sys; print(sys.executable)')" -m venv "$VENV"
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # addsitedir also runs the project venv's own .pth files (streamrl's editable install)
    echo "import site; site.addsitedir('$main_site')" > "$site/streamrl-main-venv.pth"
    "$VENV/bin/python" -m pip install -q "trl==$TRL_VERSION" >&2
    "$VENV/bin/python" -c 'import torch, trl, transformers' >&2
    echo "$want" > "$VENV/.streamrl-trl"
    echo "TRL venv built in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
