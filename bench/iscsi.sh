#!/usr/bin/env bash
# cairn's iSCSI target against tgt (shared/peers/tgt.sh), same machine, same LUN size,
# file-backed, alternated runs so noise hits all alike. Prints one line per run and workload
# and the ratios of the medians to tgt.
# Reads (iscsi-perf, cairn without cache vs tgt):
#   4 KiB random read  : iscsi-perf -r -b 8 -m 32   (512 B blocks: -b 8 = 4 KiB)
#   128 KiB seq read   : iscsi-perf -b 256 -m 32
# Writes (gateway/iscsi/examples/iscsi_write_bench, cairn without and with --cache vs tgt), WSECS each:
#   4 KiB random write, 32 in flight, without / with FUA
#   1 MiB sequential write, 8 in flight, without / with FUA
# Usage: bench/iscsi.sh [RUNS] [SIZE_MiB] [WORKDIR]      (defaults 3 1024 /tmp/bench-iscsi)
# Needs: libiscsi-bin, tgt (apt-get install -y libiscsi-bin tgt), a Rust toolchain.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -eu
RUNS=${1:-3}
SIZE=${2:-1024}
WD=${3:-/tmp/bench-iscsi}
SECS=${SECS:-10}
WSECS=${WSECS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-gw}
CPORT=3290
TPORT=3291
KPORT=3292
mkdir -p "$WD"

(cd "$ROOT" && cargo build -q --release -p cairn-gateway --example iscsi_target && cargo build -q --release -p cairn-iscsi --example iscsi_write_bench)
BIN=$CARGO_TARGET_DIR/release/examples/iscsi_target
WBENCH=$CARGO_TARGET_DIR/release/examples/iscsi_write_bench

# Real data in both backing files, so neither side reads holes.
if [ ! -f "$WD/cairn.img" ]; then dd if=/dev/urandom of="$WD/cairn.img" bs=1M count="$SIZE" status=none; fi
if [ ! -f "$WD/cache.img" ]; then cp "$WD/cairn.img" "$WD/cache.img"; fi
"$BIN" --port $CPORT --size-mib "$SIZE" --file "$WD/cairn.img" > "$WD/cairn.url" 2> "$WD/cairn.log" &
CPID=$!
"$BIN" --port $KPORT --size-mib "$SIZE" --file "$WD/cache.img" --cache > "$WD/cache.url" 2> "$WD/cache.log" &
KPID=$!
TURL=$("$PEERS/tgt.sh" start $TPORT "$SIZE" "$WD/tgt" | tail -1)
cleanup() {
  kill "$CPID" "$KPID" 2>/dev/null || true
  "$PEERS/tgt.sh" stop $TPORT "$SIZE" "$WD/tgt" || true
}
trap cleanup EXIT
for i in $(seq 50); do [ -s "$WD/cairn.url" ] && [ -s "$WD/cache.url" ] && break; sleep 0.1; done
CURL=$(head -1 "$WD/cairn.url")
KURL=$(head -1 "$WD/cache.url")
# Warm both page caches the same way.
cat "$WD/cairn.img" "$WD/cache.img" "$WD/tgt/lun.img" > /dev/null

perf() { # URL ARGS... -> iops average
  timeout -s INT "$SECS" iscsi-perf "${@:2}" "$1" 2>&1 | tr '\r' '\n' | grep 'iops average' | tail -1 |
    sed 's/.*iops average[^0-9]*\([0-9.]*\).*/\1/'
}

wperf() { # URL ARGS... -> iops
  timeout $((WSECS + 30)) "$WBENCH" "$1" "${@:2}" --secs "$WSECS" 2>/dev/null | sed -n 's/^iops \([0-9.]*\) .*/\1/p'
}

declare -A R
for run in $(seq "$RUNS"); do
  for spec in "rand4k:-r -b 8 -m 32" "seq128k:-b 256 -m 32"; do
    n=${spec%%:*}; a=${spec#*:}
    # shellcheck disable=SC2086
    c=$(perf "$CURL" $a); t=$(perf "$TURL" $a)
    echo "run $run $n: cairn ${c:-?} iops, tgt ${t:-?} iops"
    R[$n.cairn]="${R[$n.cairn]:-} ${c:-0}"; R[$n.tgt]="${R[$n.tgt]:-} ${t:-0}"
  done
  for spec in "w4k:--random --blocks 8 --qd 32" "w4kfua:--random --blocks 8 --qd 32 --fua" \
              "w1m:--blocks 2048 --qd 8" "w1mfua:--blocks 2048 --qd 8 --fua"; do
    n=${spec%%:*}; a=${spec#*:}
    # shellcheck disable=SC2086
    c=$(wperf "$CURL" $a); k=$(wperf "$KURL" $a); t=$(wperf "$TURL" $a)
    echo "run $run $n: cairn ${c:-?} iops, cairn+cache ${k:-?} iops, tgt ${t:-?} iops"
    R[$n.cairn]="${R[$n.cairn]:-} ${c:-0}"; R[$n.cache]="${R[$n.cache]:-} ${k:-0}"; R[$n.tgt]="${R[$n.tgt]:-} ${t:-0}"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
for n in rand4k seq128k; do
  c=$(echo "${R[$n.cairn]}" | median); t=$(echo "${R[$n.tgt]}" | median)
  awk -v n="$n" -v c="$c" -v t="$t" 'BEGIN { printf "%s median: cairn %.0f iops, tgt %.0f iops, ratio %.2f\n", n, c, t, (t > 0 ? c / t : 0) }'
done
for n in w4k w4kfua w1m w1mfua; do
  c=$(echo "${R[$n.cairn]}" | median); k=$(echo "${R[$n.cache]}" | median); t=$(echo "${R[$n.tgt]}" | median)
  awk -v n="$n" -v c="$c" -v k="$k" -v t="$t" 'BEGIN { printf "%s median: cairn %.0f iops (%.2f x tgt), cairn+cache %.0f iops (%.2f x tgt), tgt %.0f iops\n", n, c, (t > 0 ? c / t : 0), k, (t > 0 ? k / t : 0), t }'
done
