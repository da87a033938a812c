#!/usr/bin/env bash
# Checks a running Inferno deployment's Docker logs for start-up, registration,
# routing and job execution on every node.
#
#   scripts/validate-logs.sh [--stack NAME | --compose PROJECT] [REQUEST_ID ...]
#
# Defaults to the Swarm stack "inferno". Without request ids it checks the last
# five requests the proxy routed. Exits 1 if any check fails.
set -euo pipefail

mode=stack
name=inferno
ids=()
while [ $# -gt 0 ]; do
    case "$1" in
        --stack) mode=stack; name="$2"; shift 2 ;;
        --compose) mode=compose; name="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) ids+=("$1"); shift ;;
    esac
done

compose() {
    if docker compose version >/dev/null 2>&1; then
        timeout 60 docker compose "$@"
    else
        timeout 60 docker-compose "$@"
    fi
}

proxy_logs() {
    if [ "$mode" = stack ]; then
        timeout 60 docker service logs --raw "${name}_proxy-lb" 2>&1
    else
        compose -p "$name" -f deploy/docker-compose.yml logs --no-color proxy-lb 2>&1 | sed 's/^[^|]*| //'
    fi
}

backend_logs() {
    if [ "$mode" = stack ]; then
        timeout 60 docker service logs --no-trunc "${name}_backend" 2>&1
    else
        compose -p "$name" -f deploy/docker-compose.yml logs --no-color 2>&1 | grep -v 'proxy-lb'
    fi
}

failures=0
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; failures=$((failures + 1)); }

proxy=$(proxy_logs)
backends=$(backend_logs)
echo "Inferno log check ($mode $name)"

if grep -q "Starting proxy server on" <<<"$proxy"; then pass "proxy started"; else fail "no 'Starting proxy server on' line"; fi

registered=$(grep -o "Backend registered: [^ ]*" <<<"$proxy" | sort -u | wc -l)
started=$(grep -c "Starting backend server on" <<<"$backends" || true)
if [ "$registered" -ge 1 ]; then pass "$registered backend address(es) registered"; else fail "no 'Backend registered' line"; fi
if [ "$started" -ge 1 ]; then pass "$started backend start(s) logged"; else fail "no 'Starting backend server on' line"; fi

if [ ${#ids[@]} -eq 0 ]; then
    mapfile -t ids < <(grep -o "Routing request [^ ]*" <<<"$proxy" | awk '{print $3}' | tail -n 5)
fi
if [ ${#ids[@]} -eq 0 ]; then
    fail "no routed request found; send some traffic first"
fi
for id in "${ids[@]}"; do
    [[ "$id" =~ ^[A-Za-z0-9._:-]{1,128}$ ]] || { fail "not a request id: $id"; continue; }
    routes=$(grep -cF "Routing request $id to " <<<"$proxy" || true)
    processing=$(grep -cF "Processing inference request $id " <<<"$backends" || true)
    completed=$(grep -cE "Inference completed in [0-9]+ms for request ${id//./\\.} " <<<"$backends" || true)
    if [ "$routes" -ge 1 ] && [ "$processing" -ge 1 ] && [ "$completed" -ge 1 ]; then
        pass "request $id: routed $routes time(s), processed, completed"
    else
        fail "request $id: routed=$routes processing=$processing completed=$completed"
    fi
done

health=$(grep -cE "Health check (passed|failed)|Backend unhealthy|Backend ejected|Backend removed" <<<"$proxy" || true)
echo "  info  $health health event line(s) in the proxy log"

if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
