#!/usr/bin/env bash
# Installs the system packages Inferno needs on Debian/Ubuntu, only when missing:
# libgomp1 (OpenMP runtime for llama.cpp) and python3-venv (for `make`'s .venv).
set -euo pipefail

missing=()
# Capture first, then match: `ldconfig -p | grep -q` under pipefail fails now and
# then, when grep exits at the first match and ldconfig dies of SIGPIPE.
libs="$(ldconfig -p 2>/dev/null || true)"
if [[ "$libs" != *libgomp.so.1* ]]; then
    missing+=(libgomp1)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "Please install: ${missing[*]} (OpenMP runtime / Python venv) with your package manager." >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "Installing system packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
