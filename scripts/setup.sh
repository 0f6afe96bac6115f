#!/usr/bin/env bash
# Install everything cnnvit needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# Debian's Fashion-MNIST package (the embedded default dataset), uv, and the locked Python
# environment in .venv. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's dataset-fashion-mnist" >&2
  { as_root apt-get update -qq && as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "setup: could not install dataset-fashion-mnist; see README (Data) for other ways" >&2
fi

UV=uv
if ! command -v uv >/dev/null; then
  echo "setup: installing uv" >&2
  # Debian's own Python refuses plain --user installs (PEP 668); uv is one static binary, safe there.
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null \
    || python3 -m pip install --quiet uv
  UV="python3 -m uv"
fi

# --compile-bytecode: every later import reads the packages' bytecode instead of compiling their
# source again (where PYTHONDONTWRITEBYTECODE is set, importing cnnvit's training stack took 19 s
# that way and 6 s with it, on a 2-core machine), which every process pays: the CLI, torchrun's
# processes, Ray's workers and submitit's jobs.
$UV sync --frozen --all-extras --compile-bytecode --quiet
echo "setup: environment ready in .venv" >&2
