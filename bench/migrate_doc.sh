#!/usr/bin/env bash
# Issue 18's scenario as a user ran it: a tree copied into a mount, pinned to a new pool and
# moved by `cairn fs migrate` while the server's own gateway migrator runs too.
#
#   bench/migrate_doc.sh [SRC] [DIR]
#
# Starts `cairn server` under DIR (default: a new directory under /var/tmp), mounts it, copies
# SRC (default /usr/share/doc) to /tree, creates pool `fast` (size 1), pins /tree there and runs
# `cairn fs migrate`. Prints the map epochs and the metadata replicas' size before and after,
# the time taken, and compares every file with SRC (exit 1 on any difference). CAIRN_BIN picks
# the binary (default: a release build of this tree).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
SRC=${1:-/usr/share/doc}
DIR=${2:-$(mktemp -d /var/tmp/cairn-migrate.XXXXXX)}
mkdir -p "$DIR"
if [[ -z ${CAIRN_BIN:-} ]]; then
    cargo build --release -p cairn >/dev/null
    CAIRN_BIN=target/release/cairn
fi
BIN=$CAIRN_BIN
MPORT=$((17000 + RANDOM % 1000))
META="127.0.0.1:$MPORT,127.0.0.1:$((MPORT + 1)),127.0.0.1:$((MPORT + 2))"
export CAIRN_META=$META
$BIN server --data "$DIR/cluster" --meta-port "$MPORT" --osd-port $((MPORT + 1000)) \
    --iscsi-port $((MPORT + 500)) --nfs-port 0 --s3-port 0 >"$DIR/server.log" 2>&1 &
PID=$!
MNT=$DIR/mnt
mkdir -p "$MNT"
cleanup() {
    fusermount3 -u "$MNT" 2>/dev/null || true
    kill $PID 2>/dev/null; wait $PID 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    grep -q "Ctrl-C stops" "$DIR/server.log" && break
    kill -0 $PID 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
    sleep 0.3
done
$BIN mount "$MNT" >"$DIR/mount.log" 2>&1 &
for _ in $(seq 1 100); do
    mountpoint -q "$MNT" && break
    sleep 0.2
done
mountpoint -q "$MNT" || { cat "$DIR/mount.log"; exit 1; }
epoch() { $BIN status | sed -n 's/^cluster epoch //p' | head -1; }
metasize() { du -sb "$DIR"/cluster/meta.* | awk '{ s += $1 } END { printf "%.1f MB", s / 3e6 }'; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
T0=$(date +%s.%N)
cp -r "$SRC" "$MNT/tree"
T1=$(date +%s.%N)
FILES=$(find "$SRC" -type f | wc -l)
echo "copied $FILES files ($(du -sh "$SRC" | cut -f1)) in $(echo "$T1 - $T0" | bc) s"
$BIN pool create fast --size 1 --min-size 1 >/dev/null
E0=$(epoch); M0=$(metasize)
$BIN fs pin /tree fast >/dev/null
T2=$(date +%s.%N)
RC=0
$BIN fs migrate || RC=$?
T3=$(date +%s.%N)
E1=$(epoch); M1=$(metasize)
echo "cairn fs migrate: exit $RC in $(echo "$T3 - $T2" | bc) s"
echo "map epochs: $E0 -> $E1 (+$((E1 - E0))); metadata replica (mean): $M0 -> $M1"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
if diff -rq --no-dereference "$SRC" "$MNT/tree" >"$DIR/diff.txt" 2>&1; then
    echo "every file of $SRC reads back equal"
else
    echo "DIFFERENCES ($(wc -l <"$DIR/diff.txt")):"; head -20 "$DIR/diff.txt"; exit 1
fi
exit $RC
