#!/usr/bin/env bash
# nvdisk vs fdatasync'ed file writes: 4 KiB random writes that are durable when acknowledged.
#
#   bench/nvdisk.sh [DIR]
#
# DIR must be on the disk under test (default: target-nvdisk/bench-tmp in the checkout).
#
# Part 1 runs nvdisk/examples/nvbench: nvdisk in each mode, an in-process pwrite+fdatasync loop,
# and (if installed; apt-get install -y fio) fio --fsync=1 and --fdatasync=1 on the same disk,
# the cases interleaved round by round so that a noisy neighbour on the disk hits them alike.
# Every figure is the median of RUNS rounds (default 3) of SECS seconds (default 3); ratios are
# against fio --fsync=1.
#
# Part 2 (skip with ISCSI=0; NVBENCH=0 skips part 1) does the same through iSCSI, in one run, rounds interleaved:
# 4 KiB random WRITEs with FUA (gateway/iscsi/examples/iscsi_write_bench, WSECS seconds each, default
# 5) at queue depth 1 and 32 against
#   nv-sync  an nvdisk LUN in sync mode (gateway/examples/iscsi_target --nvdisk DIR/nv): every
#            acknowledged write is in the nvdisk's fdatasync'ed log (WCE=0, FUA costs nothing more)
#   nv-shm   an nvdisk LUN with its pool in /dev/shm: without FUA a write survives kill -9 but not
#            power loss; with FUA each write waits for a disk transaction to the backups
#   tgt      tgt (shared/peers/tgt.sh) with a file-backed LUN in DIR/tgt, which fdatasyncs on FUA
# and fio --fsync=1 (psync, queue depth 1) on a file in DIR. Prints medians and ratios to tgt and
# to fio. Needs libiscsi-bin and tgt for part 2.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${1:-$PWD/target-nvdisk/bench-tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-nvdisk}
RUNS=${RUNS:-3}
command -v fio >/dev/null || echo "fio not installed: ratios are against the in-process baseline" >&2
if [ "${NVBENCH:-1}" = 1 ]; then
  cargo build --quiet --release -p cairn-nvdisk --example nvbench
  "$CARGO_TARGET_DIR/release/examples/nvbench" --dir "$DIR" --seconds "${SECS:-3}" \
      --runs "$RUNS" --size $((256 << 20))
fi
[ "${ISCSI:-1}" = 1 ] || exit 0

echo
echo "== through iSCSI: 4 KiB random FUA writes =="
WSECS=${WSECS:-5}
SIZE=256
PEERS=${PEERS:-$ROOT/../shared/peers}
cargo build --quiet --release -p cairn-gateway --example iscsi_target
cargo build --quiet --release -p cairn-iscsi --example iscsi_write_bench
BIN=$CARGO_TARGET_DIR/release/examples/iscsi_target
WBENCH=$CARGO_TARGET_DIR/release/examples/iscsi_write_bench
NPORT=3293; SPORT=3294; TPORT=3295
mkdir -p "$DIR"
rm -rf "$DIR/nv" "$DIR/nvshm"
"$BIN" --port $NPORT --size-mib $SIZE --nvdisk "$DIR/nv" --nvdisk-mode sync > "$DIR/nv.url" 2> "$DIR/nv.log" &
NPID=$!
"$BIN" --port $SPORT --size-mib $SIZE --nvdisk "$DIR/nvshm" --nvdisk-mode shm > "$DIR/nvshm.url" 2> "$DIR/nvshm.log" &
SPID=$!
TURL=$("$PEERS/tgt.sh" start $TPORT $SIZE "$DIR/tgt" | tail -1)
cleanup() {
  kill "$NPID" "$SPID" 2>/dev/null || true
  wait "$NPID" "$SPID" 2>/dev/null || true
  "$PEERS/tgt.sh" stop $TPORT $SIZE "$DIR/tgt" || true
  rm -f "$DIR/fio-iscsi.dat"
}
trap cleanup EXIT
for _ in $(seq 600); do [ -s "$DIR/nv.url" ] && [ -s "$DIR/nvshm.url" ] && break; sleep 0.1; done
NURL=$(head -1 "$DIR/nv.url")
SURL=$(head -1 "$DIR/nvshm.url")
wperf() { # URL ARGS... -> iops
  timeout $((WSECS + 30)) "$WBENCH" "$1" "${@:2}" --secs "$WSECS" 2>/dev/null | sed -n 's/^iops \([0-9.]*\) .*/\1/p'
}
fioperf() { # -> iops of fio --fsync=1, 4 KiB random writes, one at a time
  fio --name=fsync --filename="$DIR/fio-iscsi.dat" --size=${SIZE}M --rw=randwrite --bs=4k \
      --ioengine=psync --fsync=1 --time_based --runtime="$WSECS" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
declare -A R
add() { R[$1]="${R[$1]:-} ${2:-0}"; }
for run in $(seq "$RUNS"); do
  for qd in 1 32; do
    a="--random --blocks 8 --qd $qd --fua"
    # shellcheck disable=SC2086
    { n=$(wperf "$NURL" $a); s=$(wperf "$SURL" $a); t=$(wperf "$TURL" $a); }
    echo "run $run qd$qd: nv-sync ${n:-?} iops, nv-shm ${s:-?} iops, tgt ${t:-?} iops"
    add "qd$qd.nv" "$n"; add "qd$qd.shm" "$s"; add "qd$qd.tgt" "$t"
  done
  if command -v fio >/dev/null; then
    f=$(fioperf); echo "run $run fio --fsync=1 qd1: ${f:-?} iops"; add fio "$f"
  fi
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
f=$(echo "${R[fio]:-0}" | median)
for qd in 1 32; do
  n=$(echo "${R[qd$qd.nv]}" | median); s=$(echo "${R[qd$qd.shm]}" | median); t=$(echo "${R[qd$qd.tgt]}" | median)
  awk -v q="$qd" -v n="$n" -v s="$s" -v t="$t" -v f="$f" 'BEGIN {
    printf "qd%s median: nv-sync %.0f iops (%.2f x tgt, %.2f x fio fsync), nv-shm+FUA %.0f iops (%.2f x tgt), tgt %.0f iops, fio --fsync=1 %.0f iops\n",
      q, n, (t > 0 ? n / t : 0), (f > 0 ? n / f : 0), s, (t > 0 ? s / t : 0), t, f }'
done
