#!/usr/bin/env bash
# iSCSI on cluster volumes against tgt, same machine, same LUN size, alternated in one run.
#   cairn: `cairn server` (release), one volume in a size-1 pool and one in a size-3 pool,
#          written full first so reads hit data, not holes;
#   tgt:   shared/peers/tgt.sh, a file-backed LUN of the same size.
# Workloads per run: iscsi-perf 4 KiB random read (-r -b 8 -m 32) and 128 KiB sequential read
# (-b 256 -m 32), SECS each; writes with gateway/iscsi/examples/iscsi_write_bench: 4 KiB random
# (32 in flight) with and without FUA, 1 MiB sequential (8 in flight), WSECS each.
# Prints every run, then medians and ratios to tgt. CAIRN_BIN=path runs that cairn binary.
# Usage: bench/iscsi_cluster.sh [RUNS] [SIZE_MiB] [WORKDIR]   (defaults 3 256 /var/tmp/bench-iscsi-cluster)
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -eu
RUNS=${1:-3}
SIZE=${2:-256}
WD=${3:-/var/tmp/bench-iscsi-cluster}
SECS=${SECS:-10}
WSECS=${WSECS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build -q --release -p cairn && cargo build -q --release -p cairn-iscsi --example iscsi_write_bench)
BIN=${CAIRN_BIN:-$CARGO_TARGET_DIR/release/cairn}
WBENCH=$CARGO_TARGET_DIR/release/examples/iscsi_write_bench
MPORT=27400; OPORT=27500; IPORT=23270; TPORT=23271
rm -rf "$WD/cluster"; mkdir -p "$WD"
"$BIN" server --data "$WD/cluster" --meta-port $MPORT --osd-port $OPORT --iscsi-port $IPORT --nfs-port 0 --s3-port 0 > "$WD/server.log" 2>&1 &
SPID=$!
TURL=$("$PEERS/tgt.sh" start $TPORT "$SIZE" "$WD/tgt" | tail -1)
cleanup() { kill -INT $SPID 2>/dev/null || true; wait $SPID 2>/dev/null || true; "$PEERS/tgt.sh" stop $TPORT "$SIZE" "$WD/tgt" || true; }
trap cleanup EXIT
for _ in $(seq 100); do grep -q "Ctrl-C stops" "$WD/server.log" && break; sleep 0.3; done
export CAIRN_META=127.0.0.1:$MPORT
IQN=iqn.2026-11.org.cairn:bench
"$BIN" pool create s1 --size 1 --pg-num 32 >/dev/null
"$BIN" pool create s3 --size 3 --pg-num 32 >/dev/null
"$BIN" vol create v1 "${SIZE}M" --pool s1 >/dev/null
"$BIN" vol create v3 "${SIZE}M" --pool s3 >/dev/null
"$BIN" iscsi target create $IQN >/dev/null
"$BIN" iscsi lun add $IQN v1 --lun 0 >/dev/null
"$BIN" iscsi lun add $IQN v3 --lun 1 >/dev/null
U1=iscsi://127.0.0.1:$IPORT/$IQN/0
U3=iscsi://127.0.0.1:$IPORT/$IQN/1
# Fill both volumes (sequential 1 MiB writes wrap around the LUN).
for u in $U1 $U3; do "$WBENCH" "$u" --blocks 2048 --qd 8 --secs $((SIZE / 16 + 5)) >/dev/null 2>&1 || true; done
cat "$WD/tgt/lun.img" > /dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"

perf() { timeout -s INT "$SECS" iscsi-perf "${@:2}" "$1" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -1 | sed 's/.*iops average[^0-9]*\([0-9.]*\).*/\1/'; }
wperf() { timeout $((WSECS + 30)) "$WBENCH" "$1" "${@:2}" --secs "$WSECS" 2>/dev/null | sed -n 's/^iops \([0-9.]*\) .*/\1/p'; }
declare -A R
add() { R[$1]="${R[$1]:-} ${2:-0}"; }
for run in $(seq "$RUNS"); do
  for spec in "rand4k:-r -b 8 -m 32" "seq128k:-b 256 -m 32"; do
    n=${spec%%:*}; a=${spec#*:}
    # shellcheck disable=SC2086
    { a1=$(perf "$U1" $a); a3=$(perf "$U3" $a); t=$(perf "$TURL" $a); }
    echo "run $run $n: cairn size1 ${a1:-?} iops, size3 ${a3:-?} iops, tgt ${t:-?} iops"
    add "$n.s1" "$a1"; add "$n.s3" "$a3"; add "$n.tgt" "$t"
  done
  for spec in "w4k:--random --blocks 8 --qd 32" "w4kfua:--random --blocks 8 --qd 32 --fua" "w1m:--blocks 2048 --qd 8"; do
    n=${spec%%:*}; a=${spec#*:}
    # shellcheck disable=SC2086
    { a1=$(wperf "$U1" $a); a3=$(wperf "$U3" $a); t=$(wperf "$TURL" $a); }
    echo "run $run $n: cairn size1 ${a1:-?} iops, size3 ${a3:-?} iops, tgt ${t:-?} iops"
    add "$n.s1" "$a1"; add "$n.s3" "$a3"; add "$n.tgt" "$t"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
for n in rand4k seq128k w4k w4kfua w1m; do
  s1=$(echo "${R[$n.s1]}" | median); s3=$(echo "${R[$n.s3]}" | median); t=$(echo "${R[$n.tgt]}" | median)
  awk -v n="$n" -v a="$s1" -v b="$s3" -v t="$t" 'BEGIN { printf "%-8s median: cairn size1 %.0f iops (%.2f x tgt), size3 %.0f iops (%.2f x tgt), tgt %.0f iops\n", n, a, (t>0?a/t:0), b, (t>0?b/t:0), t }'
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
