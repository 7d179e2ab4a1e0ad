#!/usr/bin/env bash
# Object API benchmark on a fresh `cairn server`, beside fio on the same disk, in one run.
#
#   bench/obj.sh [SECONDS] [DIR]
#
# Builds cairn in release mode, starts `cairn server` with its data under DIR (default: a new
# directory under /var/tmp, i.e. the disk, not tmpfs), runs `cairn bench obj` (PUT/GET of 4 KiB
# and 1 MiB objects, concurrency 1 and 16, pools of size 1 and 3) and fio (1 MiB sequential write,
# 4 KiB random write + fsync) in DIR, prints the table with ratios, and stops the server.
# CAIRN_BIN=path runs that binary instead of building (to compare two builds); CAIRN_SERVER_ARGS
# adds flags to `cairn server` (e.g. --osd-buffered, to compare with page-cache data writes).
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
DIR=${2:-$(mktemp -d /var/tmp/cairn-bench.XXXXXX)}
command -v fio >/dev/null || { echo "fio is missing: apt-get install fio" >&2; exit 1; }
if [[ -n ${CAIRN_BIN:-} ]]; then
    BIN=$CAIRN_BIN
else
    cargo build --release -p cairn >/dev/null
    BIN=target/release/cairn
fi
MPORT=$((17000 + RANDOM % 1000))
OPORT=$((MPORT + 1000))
# shellcheck disable=SC2086 # CAIRN_SERVER_ARGS is split into flags on purpose
$BIN server --data "$DIR/cluster" --meta-port $MPORT --osd-port $OPORT --iscsi-port $((MPORT + 500)) --nfs-port 0 --s3-port 0 \
    ${CAIRN_SERVER_ARGS:-} >"$DIR/server.log" 2>&1 &
PID=$!
# The cluster's data (gigabytes after the 1 MiB phases) goes with the run, and so does the
# whole directory (fio's files too) when the script made it.
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true; rm -rf "$DIR/cluster"; [[ -n ${2:-} ]] || rm -rf "$DIR"' EXIT
for _ in $(seq 1 100); do
    grep -q "Ctrl-C stops" "$DIR/server.log" && break
    kill -0 $PID 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
    sleep 0.3
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
$BIN bench --meta "127.0.0.1:$MPORT" obj --seconds "$SECS" --fio-dir "$DIR"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
