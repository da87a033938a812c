#!/usr/bin/env bash
# Builds the cluster's node image `inferno-node:bookworm` from nothing: a
# debootstrap bookworm minbase with Debian's docker.io (by build-base-image.sh),
# plus the node's entrypoint. Skips the work if the image already exists.
set -euo pipefail
cd "$(dirname "$0")/../.."

NODE_IMAGE="${INFERNO_NODE_IMAGE:-inferno-node:bookworm}"
NODE_BASE="${INFERNO_NODE_BASE:-inferno-node-base:bookworm}"
LABEL="com.inferno.cluster=image"

if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 && [ "${1:-}" != "--force" ]; then
    echo "node image $NODE_IMAGE already present"
    exit 0
fi
INFERNO_BASE_IMAGE="$NODE_BASE" \
INFERNO_BASE_PACKAGES="docker.io,iptables,ca-certificates,procps,iproute2,util-linux" \
    bash deploy/build-base-image.sh
docker build -q -f deploy/cluster/node.Dockerfile --build-arg NODE_BASE="$NODE_BASE" \
    --label "$LABEL" -t "$NODE_IMAGE" . >/dev/null
# The rootfs import is only a stepping stone: keep just the node image.
docker image rm "$NODE_BASE" >/dev/null
docker image ls "$NODE_IMAGE"
