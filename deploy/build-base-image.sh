#!/usr/bin/env bash
# Builds the base image `inferno-base:bookworm` from nothing, for engines that
# cannot pull images: debootstrap a minimal Debian bookworm with Python 3.11 and
# the OpenMP runtime, then `docker import` it. The Debian mirror is taken from
# this machine's own apt sources. Skips the work if the image already exists.
# INFERNO_BASE_IMAGE and INFERNO_BASE_PACKAGES make other images the same way
# (deploy/cluster/build-node-image.sh builds the Docker-in-Docker node with them).
set -euo pipefail

IMAGE="${INFERNO_BASE_IMAGE:-inferno-base:bookworm}"
SUITE="${INFERNO_BASE_SUITE:-bookworm}"
PACKAGES="${INFERNO_BASE_PACKAGES:-python3,python3-venv,libgomp1,ca-certificates}"

if docker image inspect "$IMAGE" >/dev/null 2>&1 && [ "${1:-}" != "--force" ]; then
    echo "base image $IMAGE already present"
    exit 0
fi

mirror_from_apt_sources() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        uri=$(grep -rhoE 'https?://[^ ]+/debian/?' /etc/apt/sources.list.d/ 2>/dev/null | grep -v security | head -n1 || true)
    fi
    echo "$uri"
}

MIRROR="${INFERNO_DEBIAN_MIRROR:-$(mirror_from_apt_sources)}"
if [ -z "$MIRROR" ]; then
    echo "no Debian mirror found in /etc/apt sources; set INFERNO_DEBIAN_MIRROR" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

ROOTFS=$(mktemp -d /tmp/inferno-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap $SUITE ($PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >/tmp/inferno-debootstrap.log 2>&1 || {
    tail -n 30 /tmp/inferno-debootstrap.log >&2
    exit 1
}
# Keep the image small: no apt lists, caches, docs or man pages.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/usr/share/info/*
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "inferno base: debootstrap $SUITE minbase + $PACKAGES" \
    - "$IMAGE" >/dev/null
docker image ls "$IMAGE"
