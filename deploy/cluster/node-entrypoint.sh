#!/bin/sh
# A Swarm node in a container: make the cgroup and /sys mounts writable (the
# engine hands them over read-only, and dockerd must create cgroups), then run
# dockerd in the foreground. /var/lib/docker is a named volume, so overlay2
# works and the node keeps its swarm membership and images across restarts.
set -eu

mount -o remount,rw /sys 2>/dev/null || true
for dir in /sys/fs/cgroup /sys/fs/cgroup/*; do
    if mountpoint -q "$dir" 2>/dev/null; then
        mount -o remount,bind,rw "$dir" 2>/dev/null || mount -o remount,rw "$dir" 2>/dev/null || true
    fi
done
rm -f /var/run/docker.pid /run/docker.pid /run/docker/containerd/containerd.pid
exec dockerd --host=unix:///var/run/docker.sock --storage-driver=overlay2 --log-level=warn "$@"
