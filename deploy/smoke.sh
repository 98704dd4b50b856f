#!/usr/bin/env bash
# docker-compose smoke test: build the image, bring the stack up, wait for health, seed and ingest the demo set,
# query over REST (curl) and gRPC (the CLI; grpcurl too when installed), check the top hit against the demo set's
# exact ground truth, restart the server and check the data survived, tear everything down.
#
#   deploy/smoke.sh          # exits non-zero on any failure; always cleans up (containers, network, volume)
#
# Environment: CHAMFER_IMAGE (default chamfer:smoke), SMOKE_HTTP_PORT / SMOKE_GRPC_PORT (host ports, default
# 18080 / 15051), SMOKE_SKIP_BUILD=1 to reuse an existing image.
set -euo pipefail
cd "$(dirname "$0")/.."

export CHAMFER_IMAGE=${CHAMFER_IMAGE:-chamfer:smoke}
export CHAMFER_HTTP_PORT=${SMOKE_HTTP_PORT:-18080}
export CHAMFER_GRPC_PORT=${SMOKE_GRPC_PORT:-15051}
PROJECT=chamfer-smoke-$$
HTTP=http://127.0.0.1:$CHAMFER_HTTP_PORT
GRPC=http://127.0.0.1:$CHAMFER_GRPC_PORT
ARCH=$(uname -m)
CLI=${CHAMFER_STATIC_TARGET_DIR:-target/static}/$ARCH-unknown-linux-gnu/release/chamfer
WORK=$(mktemp -d)

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    echo "smoke: neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 1
fi
dc() { "${COMPOSE[@]}" -p "$PROJECT" -f deploy/docker-compose.yml "$@"; }

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "SMOKE FAILED: $*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "-- server logs (last 40 lines)" >&2
        dc logs --tail 40 chamfer >&2 2>/dev/null || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT INT TERM

# Waits until the container's own healthcheck (the shell-less `chamfer healthcheck`) reports healthy.
wait_healthy() {
    local id deadline=$((SECONDS + 60)) state
    id=$(dc ps -q chamfer)
    [ -n "$id" ] || fail "no chamfer container"
    while :; do
        state=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo unknown)
        [ "$state" = healthy ] && return 0
        [ $SECONDS -lt $deadline ] || fail "not healthy after 60 s (state: $state)"
        sleep 0.2
    done
}

# Polls /readyz from the host until it answers 200: the time from start to serving.
wait_ready() {
    local t0=$1 deadline=$((SECONDS + 60))
    until curl -sf "$HTTP/readyz" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail "$HTTP/readyz did not answer within 60 s"
        sleep 0.01
    done
    since "$t0"
}

if [ "${SMOKE_SKIP_BUILD:-0}" != 1 ]; then
    step "build the image ($CHAMFER_IMAGE)"
    deploy/build-image.sh
fi
[ -x "$CLI" ] || fail "no CLI binary at $CLI (run deploy/build-image.sh)"
SIZE=$(docker image inspect "$CHAMFER_IMAGE" --format '{{.Size}}')
echo "image $CHAMFER_IMAGE: $((SIZE / 1000)) kB"
[ "$(docker image inspect "$CHAMFER_IMAGE" --format '{{.Config.User}}')" = 10001:10001 ] || fail "the image does not run as uid 10001"

step "start the server"
T0=$(now)
dc up -d --no-deps chamfer
READY=$(wait_ready "$T0")
echo "serving after ${READY} s (docker compose up -d -> /readyz 200)"
wait_healthy
echo "healthy (container healthcheck: /chamfer healthcheck)"

step "seed (one-shot service) and ingest the demo set with the CLI"
dc up --no-recreate seed
SEED=$(dc ps -q seed)
[ "$(docker inspect -f '{{.State.ExitCode}}' "$SEED")" = 0 ] || fail "the seed service failed"
SEEDLOG=$(dc logs --no-color seed)
[[ $SEEDLOG == *"ingested 300 documents into demo"* ]] || fail "the seed service did not load 300 documents"
# A second ingest from the host is a cheap no-op: every id is already stored.
OUT=$("$CLI" ingest --addr "$GRPC" --collection demo --data data/demo)
echo "$OUT"
[[ $OUT == *"ingested 0 documents into demo (300 already stored"* ]] || fail "re-ingest was not idempotent"

step "query over REST (curl) and gRPC (CLI) and compare with the ground truth"
QID=$(head -n 1 data/demo/query_ids.txt)
TRUTH=$("$CLI" query --addr "$GRPC" --collection demo --data data/demo --query-id "$QID" --k 5 --format json |
    sed -n 's/.*"ground_truth":\["\([^"]*\)".*/\1/p')
[ -n "$TRUTH" ] || fail "no ground truth for query $QID"
"$CLI" query --data data/demo --query-id "$QID" --collection demo --k 5 --emit-rest-body >"$WORK/body.json"
check_top() { # $1 = protocol label
    local rest grpc
    rest=$(curl -sf -H 'Content-Type: application/json' -d @"$WORK/body.json" "$HTTP/v1/collections/demo/search" |
        grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)
    grpc=$("$CLI" query --addr "$GRPC" --collection demo --data data/demo --query-id "$QID" --k 5 --format ids | sed -n 1p)
    echo "$1: ground truth $TRUTH, REST top hit $rest, gRPC top hit $grpc"
    [ "$rest" = "$TRUTH" ] || fail "REST top hit $rest != ground truth $TRUTH"
    [ "$grpc" = "$TRUTH" ] || fail "gRPC top hit $grpc != ground truth $TRUTH"
    if command -v grpcurl >/dev/null 2>&1; then
        "$CLI" query --data data/demo --query-id "$QID" --collection demo --k 5 --emit-grpc-body >"$WORK/grpc.json"
        local out
        out=$(grpcurl -plaintext -d @ "127.0.0.1:$CHAMFER_GRPC_PORT" chamfer.v1.Search/Search <"$WORK/grpc.json")
        [[ $out == *"\"$TRUTH\""* ]] || fail "grpcurl did not return $TRUTH"
        echo "$1: grpcurl agrees"
    fi
}
check_top "before restart"
DOCS=$(curl -sf "$HTTP/v1/collections/demo" | grep -o '"documents":[0-9]*' | cut -d: -f2)
[ "$DOCS" = 300 ] || fail "expected 300 documents, found $DOCS"

step "restart the server: the data must still be there"
T1=$(now)
dc restart chamfer
RESTART=$(wait_ready "$T1")
echo "serving again after ${RESTART} s (docker compose restart -> /readyz 200, including the graceful stop)"
wait_healthy
DOCS=$(curl -sf "$HTTP/v1/collections/demo" | grep -o '"documents":[0-9]*' | cut -d: -f2)
[ "$DOCS" = 300 ] || fail "after the restart: expected 300 documents, found $DOCS"
check_top "after restart"

step "start time of a stopped container (docker start, without compose's own overhead)"
ID=$(dc ps -q chamfer)
docker stop "$ID" >/dev/null
T2=$(now)
docker start "$ID" >/dev/null
START=$(wait_ready "$T2")
echo "serving after ${START} s (docker start -> /readyz 200; process start, opening the 300-document shard, binding both ports)"
(( $(awk -v s="$START" 'BEGIN { print (s < 1.0) }') )) || echo "WARNING: start took ${START} s (target: under 1 s)" >&2

step "tear down"
dc down -v --remove-orphans
printf '\nSMOKE OK: image %s %s kB, ready %s s after up, %s s after start, %s s after restart\n' \
    "$CHAMFER_IMAGE" "$((SIZE / 1000))" "$READY" "$START" "$RESTART"
