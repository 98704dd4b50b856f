#!/usr/bin/env bash
# Builds the chamfer image without pulling anything: a static binary compiled on the host with cargo, then
# `docker build` of deploy/Dockerfile (FROM scratch) on a context holding only the binary and the demo data set.
#
#   deploy/build-image.sh                 # image chamfer:local
#   CHAMFER_IMAGE=chamfer:0.1 deploy/build-image.sh
#
# The static build has its own target dir (target/static) so it does not invalidate the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${CHAMFER_IMAGE:-chamfer:local}
ARCH=$(uname -m)
TARGET=${CHAMFER_TARGET:-$ARCH-unknown-linux-gnu}
TARGET_DIR=${CHAMFER_STATIC_TARGET_DIR:-target/static}

echo "== building a static chamfer binary ($TARGET)" >&2
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --locked --target "$TARGET" -p chamfer-cli --bin chamfer
BIN="$TARGET_DIR/$TARGET/release/chamfer"
if ldd "$BIN" 2>/dev/null | grep -q '=>'; then
    echo "error: $BIN is dynamically linked" >&2
    exit 1
fi

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/chamfer"
strip "$CTX/chamfer" 2>/dev/null || true
cp -r data/demo "$CTX/demo"
mkdir "$CTX/data" "$CTX/tmp"
cp deploy/Dockerfile "$CTX/Dockerfile"

echo "== docker build -t $IMAGE" >&2
docker build -q -t "$IMAGE" "$CTX" >/dev/null
docker image inspect "$IMAGE" --format '{{.Size}}' |
    awk -v img="$IMAGE" '{ printf "built %s: %.1f MB\n", img, $1 / 1e6 }'
