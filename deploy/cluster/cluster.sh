#!/usr/bin/env bash
# A three-node Docker Swarm on one machine, for placement and node-failure tests
# (docs/multinode.md): each node is a Docker-in-Docker container running Debian's
# engine. Everything it creates carries the label com.inferno.cluster.
#
#   cluster.sh up | status | deploy | drain NODE | kill NODE | restore NODE | down | clean
set -euo pipefail
cd "$(dirname "$0")/../.."

LABEL=com.inferno.cluster
NETWORK=inferno-cluster
SHARED=inferno-cluster-shared
NODE_IMAGE="${INFERNO_NODE_IMAGE:-inferno-node:bookworm}"
IMAGE="${INFERNO_IMAGE:-inferno:latest}"
STACK="${INFERNO_CLUSTER_STACK:-inferno}"
PROXY_PORT="${INFERNO_CLUSTER_PROXY_PORT:-28080}"
OPS_PORT="${INFERNO_CLUSTER_OPS_PORT:-26100}"
TOKEN_FILE="${INFERNO_CLUSTER_TOKEN_FILE:-deploy/cluster/cluster-token}"
ADMIN_TOKEN_FILE="${INFERNO_CLUSTER_ADMIN_TOKEN_FILE:-deploy/cluster/admin-token}"
MANAGER=manager
WORKERS=(worker1 worker2)
NODES=("$MANAGER" "${WORKERS[@]}")
# Fixed addresses on the cluster's own bridge, so a node that is stopped, or
# removed by swarm-down and started again, comes back where the swarm knows it.
SUBNET="${INFERNO_CLUSTER_SUBNET:-172.30.231.0/24}"
declare -A HOST_OCTET=([manager]=10 [worker1]=11 [worker2]=12)
node_ip() { echo "${SUBNET%.*}.${HOST_OCTET[$1]}"; }

container() { echo "inferno-node-$1"; }
on() { local node=$1; shift; docker exec "$(container "$node")" "$@"; }
on_manager() { on "$MANAGER" "$@"; }
into_manager() { docker exec -i "$(container "$MANAGER")" sh -c "umask 077 && cat > $1"; }  # stdin -> a 0600 file in the manager
log() { echo "[cluster] $*"; }

# What `docker run --privileged` would give, which this engine refuses.
NODE_FLAGS=(
    --cap-add ALL --cap-drop SYS_RESOURCE
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined
    --device-cgroup-rule 'a *:* rwm' --device /dev/fuse
)

wait_engine() {  # the node's dockerd answers, within 60 s
    local node=$1
    for _ in $(seq 1 120); do
        on "$node" docker info >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "the engine in node $node did not start; its log:" >&2
    docker logs --tail 30 "$(container "$node")" >&2
    return 1
}

start_node() {
    local node=$1 name
    name=$(container "$node")
    if docker container inspect "$name" >/dev/null 2>&1; then
        [ "$(docker container inspect -f '{{.State.Running}}' "$name")" = true ] || docker start "$name" >/dev/null
    else
        local ports=()
        if [ "$node" = "$MANAGER" ]; then
            # Only the manager is reachable from the host, and only on loopback.
            ports=(-p "127.0.0.1:$PROXY_PORT:8080" -p "127.0.0.1:$OPS_PORT:6100")
        fi
        docker volume create --label "$LABEL=volume" "$name-docker" >/dev/null
        docker run -d --name "$name" --hostname "$node" --network "$NETWORK" --network-alias "$node" \
            --ip "$(node_ip "$node")" \
            --label "$LABEL=node" "${NODE_FLAGS[@]}" "${ports[@]}" \
            -v "$name-docker:/var/lib/docker" -v "$SHARED:/shared" \
            "$NODE_IMAGE" >/dev/null
    fi
}

wait_ready() {  # every named node Ready in the manager's view, within 60 s
    for node in "$@"; do
        for _ in $(seq 1 120); do
            [ "$(on_manager docker node inspect -f '{{.Status.State}}' "$node" 2>/dev/null)" = ready ] && continue 2
            sleep 0.5
        done
        echo "node $node is not Ready in the swarm" >&2
        return 1
    done
}

swarm_state() { on "$1" docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }

load_image() {
    # One `docker save` into the volume all nodes share (the stand-in for shared
    # storage), then a `docker load` in every node at once.
    local want
    want=$(docker image inspect -f '{{.Id}}' "$IMAGE")
    local stale=()
    for node in "${NODES[@]}"; do
        [ "$(on "$node" docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)" = "$want" ] || stale+=("$node")
    done
    [ ${#stale[@]} -gt 0 ] || { log "image $IMAGE already on every node"; return 0; }
    log "loading $IMAGE into ${stale[*]}"
    docker save "$IMAGE" | into_manager /shared/inferno-image.tar
    local pids=()
    for node in "${stale[@]}"; do
        on "$node" docker load -q -i /shared/inferno-image.tar >/dev/null & pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    on "$MANAGER" rm -f /shared/inferno-image.tar
}

cmd_up() {
    bash deploy/cluster/build-node-image.sh
    docker network inspect "$NETWORK" >/dev/null 2>&1 ||
        docker network create --label "$LABEL=network" --subnet "$SUBNET" "$NETWORK" >/dev/null
    docker volume create --label "$LABEL=volume" "$SHARED" >/dev/null
    for node in "${NODES[@]}"; do start_node "$node"; done
    for node in "${NODES[@]}"; do wait_engine "$node"; done
    if [ "$(swarm_state "$MANAGER")" != active ]; then
        log "swarm init on $MANAGER"
        on_manager docker swarm init --advertise-addr eth0 >/dev/null
    fi
    local token
    token=$(on_manager docker swarm join-token -q worker)
    for node in "${WORKERS[@]}"; do
        local state
        state=$(swarm_state "$node")
        if [ "$state" = pending ] || [ "$state" = error ]; then
            # It remembers a swarm it cannot reach (e.g. one made again from nothing): start over.
            log "$node cannot reach its swarm ($state): leaving it"
            on "$node" docker swarm leave --force >/dev/null
            on_manager sh -c "docker node ls -q --filter name=$node | xargs -r docker node rm --force" >/dev/null
            state=inactive
        fi
        if [ "$state" != active ]; then
            log "$node joins"
            on "$node" docker swarm join --advertise-addr eth0 --token "$token" "$MANAGER:2377" >/dev/null
        fi
    done
    wait_ready "${NODES[@]}"
    on_manager docker node update --label-add inferno.lb=true "$MANAGER" >/dev/null
    local zone=a
    for node in "${WORKERS[@]}"; do
        on_manager docker node update --label-add inferno.inference=true --label-add "zone=$zone" "$node" >/dev/null
        zone=$(echo "$zone" | tr 'a-y' 'b-z')
    done
    load_image
    log "up: manager publishes 127.0.0.1:$PROXY_PORT (data) and 127.0.0.1:$OPS_PORT (ops)"
}

cmd_status() {
    on_manager docker node ls
    echo
    for node in "${NODES[@]}"; do
        printf '%-8s %s\n' "$node" "$(on_manager docker node inspect -f '{{.Spec.Availability}} {{.Status.State}} {{json .Spec.Labels}}' "$node" 2>/dev/null || echo '(not in the swarm)')"
    done
    echo
    on_manager docker stack services "$STACK" 2>/dev/null || echo "(no stack deployed)"
    echo
    on_manager docker stack ps --no-trunc=false --format '{{.Name}}	{{.Node}}	{{.CurrentState}}	{{.Error}}' \
        --filter desired-state=running "$STACK" 2>/dev/null || true
    echo
    docker stats --no-stream --format '{{.Name}}	cpu {{.CPUPerc}}	mem {{.MemUsage}}' \
        $(docker ps -q --filter "label=$LABEL=node")
}

cmd_deploy() {
    for file in "$TOKEN_FILE" "$ADMIN_TOKEN_FILE"; do
        if [ ! -s "$file" ]; then
            # Readable by its owner only: Swarm copies it into its secret store.
            (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$file")
        fi
    done
    on_manager mkdir -p /stack
    for file in deploy/docker-stack.yml deploy/cluster/stack-multinode.yml; do
        into_manager "/stack/$(basename "$file")" < "$file"
    done
    into_manager /stack/cluster-token < "$TOKEN_FILE"
    into_manager /stack/admin-token < "$ADMIN_TOKEN_FILE"
    # The controller runs in the group of the manager's Docker socket.
    local gid
    gid=$(on_manager stat -c %g /var/run/docker.sock)
    on_manager env INFERNO_CLUSTER_TOKEN_FILE=/stack/cluster-token INFERNO_ADMIN_TOKEN_FILE=/stack/admin-token \
        DOCKER_GID="$gid" INFERNO_IMAGE="$IMAGE" \
        docker stack deploy --resolve-image never -c /stack/docker-stack.yml \
        -c /stack/stack-multinode.yml "$STACK"
}

cmd_drain() { on_manager docker node update --availability drain "$1" >/dev/null; log "$1 drained"; }

cmd_kill() { docker kill "$(container "$1")" >/dev/null; log "$1's container stopped outright (SIGKILL)"; }

cmd_restore() {
    local node=$1
    start_node "$node"
    wait_engine "$node"
    wait_ready "$node"
    on_manager docker node update --availability active "$node" >/dev/null
    # Swarm never moves running tasks back by itself: rebalance the backends. One
    # task at a time, stopped before its replacement is placed, so that the zone
    # spread sees the real counts and puts each on the emptier worker (start-first
    # would count the old task too, and a tie may land both on one worker).
    on_manager docker service update --detach --force --update-order stop-first "${STACK}_backend" >/dev/null
    log "$node active again; ${STACK}_backend rebalancing"
}

cmd_down() {
    if docker container inspect "$(container "$MANAGER")" >/dev/null 2>&1; then
        on_manager docker stack rm "$STACK" >/dev/null 2>&1 || true
    fi
    for node in "${NODES[@]}"; do docker rm -f "$(container "$node")" >/dev/null 2>&1 || true; done
    docker network rm "$NETWORK" >/dev/null 2>&1 || true
    log "down (volumes kept: $(docker volume ls -q --filter "label=$LABEL" | tr '\n' ' '))"
}

cmd_clean() {
    cmd_down
    docker volume ls -q --filter "label=$LABEL" | xargs -r docker volume rm >/dev/null
    docker image ls -q --filter "label=$LABEL" | xargs -r docker image rm -f >/dev/null
    rm -f "$TOKEN_FILE" "$ADMIN_TOKEN_FILE"
    log "clean: nothing labelled $LABEL is left"
}

case "${1:-}" in
    up) cmd_up ;;
    status) cmd_status ;;
    deploy) cmd_deploy ;;
    drain) cmd_drain "${2:?usage: cluster.sh drain NODE}" ;;
    kill) cmd_kill "${2:?usage: cluster.sh kill NODE}" ;;
    restore) cmd_restore "${2:?usage: cluster.sh restore NODE}" ;;
    down) cmd_down ;;
    clean) cmd_clean ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
esac
