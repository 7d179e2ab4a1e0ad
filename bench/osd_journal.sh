#!/usr/bin/env bash
# OSD small-object PUT latency and throughput by write journal: the file journal (fdatasync, group
# commit) vs an nvdisk journal in /dev/shm (process-crash safe) vs an nvdisk journal with an
# fdatasync'ed write-ahead log (power-loss safe).
#
#   bench/osd_journal.sh [DIR]
#
# For each journal, a fresh cluster of one `cairn meta` and one `cairn osd --journal SPEC` with
# their data under DIR (default: a new directory under /var/tmp, i.e. the disk, not tmpfs), driven
# by `cairn bench obj` with 4 KiB objects, one pool of size 1, concurrency 1 and 16. The journals
# take turns round by round so that a noisy neighbour hits them alike; every figure is the median
# of RUNS rounds (default 3) of SECS seconds (default 5). Ratios are against the file journal.
# PROFILE=dev uses the debug build (default: release); CARGO_TARGET_DIR is honoured.
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$(mktemp -d /var/tmp/cairn-osdj.XXXXXX)}
SECS=${SECS:-5}
RUNS=${RUNS:-3}
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
if [ "$PROFILE" = release ]; then
    cargo build --quiet --release -p cairn
    BIN=$TARGET/release/cairn
else
    cargo build --quiet -p cairn
    BIN=$TARGET/debug/cairn
fi
JOURNALS=(file nvdisk:shm nvdisk:sync)
RESULTS=$DIR/results.jsonl
mkdir -p "$DIR"
: >"$RESULTS"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT

wait_for() { # LOG PATTERN PID
    for _ in $(seq 1 300); do
        grep -qs "$2" "$1" && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; exit 1; }
        sleep 0.2
    done
    echo "timed out waiting for '$2' in $1" >&2
    cat "$1" >&2
    exit 1
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$RUNS"); do
    for j in "${JOURNALS[@]}"; do
        D=$DIR/run$run-${j//[:,=\/]/_}
        MPORT=$((17000 + RANDOM % 2000))
        OPORT=$((MPORT + 2000))
        mkdir -p "$D"
        $BIN meta --id 1 --listen "127.0.0.1:$MPORT" --data "$D/meta" \
            --peers "1=127.0.0.1:$MPORT" >"$D/meta.log" 2>&1 &
        PIDS+=($!)
        $BIN osd --listen "127.0.0.1:$OPORT" --data "$D/osd" --meta "127.0.0.1:$MPORT" \
            --journal "$j" >"$D/osd.log" 2>&1 &
        OPID=$!
        PIDS+=($OPID)
        wait_for "$D/osd.log" "osd serving" $OPID
        $BIN bench --meta "127.0.0.1:$MPORT" obj --seconds "$SECS" --sizes 4k \
            --concurrency 1,16 --pool-sizes 1 --json >"$D/bench.out" 2>"$D/bench.err"
        grep '^{' "$D/bench.out" | grep '"put ' |
            sed "s|^{|{\"journal\":\"$j\",\"run\":$run,|" >>"$RESULTS"
        echo "run $run $j: $(grep -c '"put ' "$D/bench.out") PUT phases"
        cleanup
        # The shm pool outlives the OSD by design; this one is done with. Its name is the
        # canonical data directory with every byte outside [A-Za-z0-9.-] turned into '_'.
        POOL=$(realpath "$D/osd" | sed 's/[^A-Za-z0-9.-]/_/g; s/^_*//')
        rm -f "/dev/shm/cairn-osd-$POOL.pool"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$RESULTS" "${JOURNALS[@]}" <<'EOF'
import json, statistics, sys
path, journals = sys.argv[1], sys.argv[2:]
rows = [json.loads(l) for l in open(path)]
def conc(phase):
    return int(next(w for w in phase.split() if w.startswith("c"))[1:])
med = {}
for j in journals:
    for c in sorted({conc(r["phase"]) for r in rows}):
        rs = [r for r in rows if r["journal"] == j and conc(r["phase"]) == c]
        if rs:
            med[(j, c)] = {k: statistics.median(r[k] for r in rs)
                           for k in ("ops_per_sec", "p50_us", "p99_us", "errors")} | {"n": len(rs)}
print()
print("4 KiB PUT, pool size 1, median of %d runs" % max(m["n"] for m in med.values()))
print(f"{'journal':<14} {'conc':>4} {'ops/s':>9} {'p50 us':>8} {'p99 us':>8} {'errors':>6}   vs file: ops/s  p50")
for (j, c), m in med.items():
    base = med.get(("file", c))
    ratio = ""
    if base and j != "file":
        ratio = f"{m['ops_per_sec'] / base['ops_per_sec']:.2f}x  {m['p50_us'] / max(base['p50_us'], 1):.2f}x"
    print(f"{j:<14} {c:>4} {m['ops_per_sec']:>9.0f} {m['p50_us']:>8.0f} {m['p99_us']:>8.0f} {m['errors']:>6.0f}   {ratio}")
EOF
