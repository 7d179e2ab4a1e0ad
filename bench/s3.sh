#!/usr/bin/env bash
# S3 API benchmark: PUT and GET of 4 KiB and 1 MiB objects with 16 concurrent clients through a
# gateway's S3 API, beside the same operations through the native object API on the same
# cluster, in one run (the S3 layer's overhead as a ratio).
#
#   bench/s3.sh [SECONDS] [DIR]
#
# Builds cairn in release mode, starts `cairn server` with its data under DIR (default: a new
# directory under /var/tmp, on the disk), reads the admin S3 key it prints, runs
# `cairn bench s3`, and stops the server.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
DIR=${2:-$(mktemp -d /var/tmp/cairn-bench-s3.XXXXXX)}
cargo build --release -p cairn >/dev/null
BIN=${CARGO_TARGET_DIR:-target}/release/cairn
MPORT=$((17000 + RANDOM % 1000))
OPORT=$((MPORT + 1000))
SPORT=$((MPORT + 2000))
$BIN server --data "$DIR/cluster" --meta-port $MPORT --osd-port $OPORT --iscsi-port $((MPORT + 500)) \
    --nfs-port 0 --s3-port $SPORT >"$DIR/server.log" 2>&1 &
PID=$!
# The cluster's data (gigabytes after the 1 MiB phases) goes with the run, and so does the
# whole directory (fio's files too) when the script made it.
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true; rm -rf "$DIR/cluster"; [[ -n ${2:-} ]] || rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do
    grep -q "Ctrl-C stops" "$DIR/server.log" && break
    kill -0 $PID 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
    sleep 0.3
done
AK=$(grep -o 'access key [A-Z0-9]*' "$DIR/server.log" | awk '{print $3}')
SK=$(grep -o 'secret key [A-Za-z0-9]*' "$DIR/server.log" | awk '{print $3}')
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
$BIN bench --meta "127.0.0.1:$MPORT" s3 --endpoint "http://127.0.0.1:$SPORT" \
    --access-key "$AK" --secret-key "$SK" --seconds "$SECS" --concurrency 16
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
