#!/usr/bin/env bash
# CPU profile of a write benchmark: where the time goes in `cairn server` (every daemon runs in
# that one process) and in the benchmarking client, recorded with perf while the PUT phase of
# `cairn bench obj` runs.
#
#   bench/profile.sh [SIZE] [CONCURRENCY] [POOL_SIZE] [SECONDS] [DIR]   (defaults 4k 1 3 10, DIR under /var/tmp)
#
# Prints the load, the PUT phase's result and the CPU each process used (of one core), then per
# process the top 15 symbols by self time, the busiest threads, and the share of each area (osd,
# metadata, client, proto, sled, crc, kernel, libc, tokio, other). perf.data files stay in DIR for
# `perf report -i`. CAIRN_BIN=path profiles that binary; PERF_RECORD_ARGS=-g records call graphs
# of the server.
# Needs perf and root (or kernel.perf_event_paranoid <= 1).
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-4k}
CONC=${2:-1}
PSIZE=${3:-3}
SECS=${4:-10}
DIR=${5:-$(mktemp -d /var/tmp/cairn-profile.XXXXXX)}
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
if [[ -n ${CAIRN_BIN:-} ]]; then
    BIN=$CAIRN_BIN
else
    cargo build --release -p cairn >/dev/null
    BIN=target/release/cairn
fi
mkdir -p "$DIR"
MPORT=$((18000 + RANDOM % 1000))
OPORT=$((MPORT + 1000))
"$BIN" server --data "$DIR/cluster" --meta-port $MPORT --osd-port $OPORT --iscsi-port $((MPORT + 500)) --nfs-port 0 --s3-port 0 \
    >"$DIR/server.log" 2>&1 &
SPID=$!
# perf.data files stay; the cluster's data (gigabytes) goes with the run.
trap 'kill $SPID 2>/dev/null; wait $SPID 2>/dev/null || true; rm -rf "$DIR/cluster"' EXIT
for _ in $(seq 1 100); do
    grep -q "Ctrl-C stops" "$DIR/server.log" && break
    kill -0 $SPID 2>/dev/null || { cat "$DIR/server.log"; exit 1; }
    sleep 0.3
done
bench() { "$BIN" bench --meta "127.0.0.1:$MPORT" obj --sizes "$SIZE" --concurrency "$CONC" --pool-sizes "$PSIZE" "$@"; }
# A first short run creates the pool and waits for its groups, so the profiled run starts writing at once.
bench --seconds 1 >/dev/null 2>&1
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# The client runs as a direct child so that $! is its PID (perf records that process).
"$BIN" bench --meta "127.0.0.1:$MPORT" obj --sizes "$SIZE" --concurrency "$CONC" --pool-sizes "$PSIZE" \
    --seconds $((SECS + 2)) >"$DIR/bench.out" 2>&1 &
BPID=$!
sleep 1
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_pct() { echo $(( ($2 - $1) * 100 / $(getconf CLK_TCK) / SECS )); }
S0=$(ticks $SPID)
C0=$(ticks $BPID)
perf record -q -F 999 ${PERF_RECORD_ARGS:-} -p $SPID -o "$DIR/server.perf.data" -- sleep "$SECS" 2>/dev/null &
P1=$!
perf record -q -F 999 -p $BPID -o "$DIR/client.perf.data" -- sleep "$SECS" 2>/dev/null &
P2=$!
wait $P1 $P2 || true
C1=$(ticks $BPID)
S1=$(ticks $SPID)
echo "load during: $(cut -d' ' -f1-3 /proc/loadavg)"
wait $BPID || true
grep -E "^put" "$DIR/bench.out" | tail -1 || cat "$DIR/bench.out"
echo "cpu used during the ${SECS} s: server $(cpu_pct "$S0" "$S1")%, client $(cpu_pct "$C0" "$C1")% of one core"

area() {
    # perf report lines: "<percent>% <dso> [.|k] <symbol>"; self time summed per area.
    awk '
    {
        pct = $1; sub(/%/, "", pct); dso = $2
        sym = $0; sub(/^ *[0-9.]+% +[^ ]+ +\[[^]]*\] +/, "", sym)
        a = "other"
        if (dso ~ /kernel/) a = "kernel"
        else if (dso ~ /libc|ld-linux/) a = "libc"
        else if (sym ~ /cairn_osd/) a = "osd"
        else if (sym ~ /cairn_metadata|raft/) a = "metadata"
        else if (sym ~ /cairn_client/) a = "client"
        else if (sym ~ /cairn_proto|bincode|serde/) a = "proto"
        else if (sym ~ /sled/) a = "sled"
        else if (sym ~ /crc32/) a = "crc"
        else if (sym ~ /tokio|mio/) a = "tokio"
        n[a] += pct; t += pct
    }
    END { for (k in n) printf "    %-9s %5.1f%%\n", k, 100 * n[k] / t }' | sort -k2 -rn
}
for who in server client; do
    f="$DIR/$who.perf.data"
    [[ -s $f ]] || { echo "$who: no samples"; continue; }
    echo "== $who: top symbols by self time"
    perf report -q -i "$f" --no-children --sort dso,symbol -g none --percent-limit 0.5 2>/dev/null |
        grep -v '^$' | head -15 |
        sed 's/^ */    /' | cut -c1-140
    echo "== $who: busiest threads"
    perf report -q -i "$f" --no-children --sort comm -g none 2>/dev/null | grep -v '^$' | head -8 |
        sed 's/^ */    /'
    echo "== $who: by area"
    perf report -q -i "$f" --no-children --sort dso,symbol -g none --percent-limit 0 2>/dev/null | area
done
echo "perf data: $DIR/server.perf.data $DIR/client.perf.data"
