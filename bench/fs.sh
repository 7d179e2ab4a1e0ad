#!/usr/bin/env bash
# File-system benchmark: cairn's FUSE mount beside a plain local directory on the same disk (the
# limit) and a GlusterFS FUSE mount (2 bricks, PEERS/gluster.sh), in one run.
#   - 1 GiB sequential write (dd bs=1M conv=fsync) and read (dd bs=1M after drop_caches)
#   - N files of 4 KiB: create+write, stat, read, setxattr, getxattr, link, symlink, unlink
#     (files/s per phase, one thread)
# Prints one table and the ratios cairn/local and cairn/gluster.
# Usage: bench/fs.sh [WORKDIR=/tmp/cairn-fsbench] [NFILES=10000] [MiB=1024]
# Env: CAIRN (binary, default target/release/cairn or target*/debug/cairn), GLUSTER=0 to skip,
# PEERS (the peer systems' scripts, default ../shared/peers beside the checkout).
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 0
fi
set -u
WD=${1:-/tmp/cairn-fsbench}
N=${2:-10000}
S=${3:-1024}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
if [ -z "${CAIRN:-}" ]; then
  for c in "$ROOT/target/release/cairn" "$ROOT"/target*/release/cairn "$ROOT/target/debug/cairn" "$ROOT"/target*/debug/cairn; do
    [ -x "$c" ] && CAIRN=$c && break
  done
fi
[ -x "${CAIRN:-}" ] || { echo "no cairn binary: cargo build --release -p cairn" >&2; exit 1; }
rm -rf "$WD"; mkdir -p "$WD/local" "$WD/mnt"
MP=$((20000 + RANDOM % 20000))
META="127.0.0.1:$MP,127.0.0.1:$((MP+1)),127.0.0.1:$((MP+2))"
PIDS=()
cleanup() {
  fusermount3 -u -z "$WD/mnt" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ "${GLUSTER:-1}" = 1 ] && "$PEERS/gluster.sh" stop 2 "$WD/gluster" >/dev/null 2>&1
}
trap cleanup EXIT

dropc() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# rate in MB/s from dd's last line ("... copied, 2.1 s, 512 MB/s")
ddrate() { awk '{u=$NF; v=$(NF-1); if (u=="GB/s") v*=1000; if (u=="kB/s") v/=1000; print v}'; }

bench_dir() { # NAME DIR
  local name=$1 d=$2/bench.$$
  mkdir -p "$d"
  dropc
  local w r
  w=$(dd if=/dev/zero of="$d/big" bs=1M count="$S" conv=fsync 2>&1 | tail -1 | ddrate)
  dropc
  r=$(dd if="$d/big" of=/dev/null bs=1M 2>&1 | tail -1 | ddrate)
  rm -f "$d/big"
  local small
  small=$(python3 - "$d/small" "$N" <<'PYEOF'
import os, sys, time
d = sys.argv[1]; N = int(sys.argv[2]); os.makedirs(d, exist_ok=True)
buf = b"x" * 4096
def phase(f):
    t = time.time()
    for i in range(N): f(f"{d}/f{i}")
    return N / (time.time() - t)
def create(p):
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644); os.write(fd, buf); os.close(fd)
def read(p):
    fd = os.open(p, os.O_RDONLY); assert len(os.read(fd, 8192)) == 4096; os.close(fd)
def setx(p): os.setxattr(p, "user.bench", b"value")
def getx(p): assert os.getxattr(p, "user.bench") == b"value"
def link(p): os.link(p, p + ".l")
def symlink(p): os.symlink(p, p + ".s")
c = phase(create); s = phase(os.stat); r = phase(read)
xs = phase(setx); xg = phase(getx); ln = phase(link); sl = phase(symlink)
for i in range(N):
    os.unlink(f"{d}/f{i}.l"); os.unlink(f"{d}/f{i}.s")
u = phase(os.unlink)
os.rmdir(d)
print(f"{c:.0f} {s:.0f} {r:.0f} {u:.0f} {xs:.0f} {xg:.0f} {ln:.0f} {sl:.0f}")
PYEOF
)
  rmdir "$d" 2>/dev/null
  echo "$name $w $r $small"
}

echo "== cairn cluster (3 metadata replicas, 3 OSDs, pool size 3) from $CAIRN"
"$CAIRN" server --data "$WD/cairn" --meta 3 --osds 3 --meta-port "$MP" --osd-port $((MP+100)) \
  --iscsi-port $((MP+200)) > "$WD/server.log" 2>&1 &
PIDS+=($!)
for i in $(seq 60); do "$CAIRN" status --meta "$META" >/dev/null 2>&1 && break; sleep 1; done
for i in $(seq 30); do "$CAIRN" pool ls --meta "$META" 2>/dev/null | grep -q default && break; sleep 1; done
"$CAIRN" mount "$WD/mnt" --meta "$META" > "$WD/mount.log" 2>&1 &
PIDS+=($!)
for i in $(seq 60); do grep -q " $WD/mnt " /proc/self/mounts && break; sleep 0.5; done
grep -q " $WD/mnt " /proc/self/mounts || { echo "cairn mount failed:"; cat "$WD/mount.log"; exit 1; }

RES=()
RES+=("$(bench_dir local "$WD/local")")
RES+=("$(bench_dir cairn "$WD/mnt")")
if [ "${GLUSTER:-1}" = 1 ]; then
  if "$PEERS/gluster.sh" start 2 "$WD/gluster" > "$WD/gluster.log" 2>&1; then
    RES+=("$(bench_dir gluster "$WD/gluster/mnt")")
  else
    echo "glusterd could not start here (see $WD/gluster.log)"
  fi
fi

printf "\n%-8s %10s %10s %9s %9s %9s %9s %9s %9s %9s %9s\n" target "write MB/s" "read MB/s" \
  "create/s" "stat/s" "read/s" "unlink/s" "setxa/s" "getxa/s" "link/s" "symlink/s"
for r in "${RES[@]}"; do printf "%-8s %10s %10s %9s %9s %9s %9s %9s %9s %9s %9s\n" $r; done
ratio() { # NAME
  local base; base=$(printf "%s\n" "${RES[@]}" | awk -v n="$1" '$1==n')
  local mine; mine=$(printf "%s\n" "${RES[@]}" | awk '$1=="cairn"')
  [ -n "$base" ] && [ -n "$mine" ] || return
  echo "$mine $base" | awk -v n="$1" '{printf "cairn/%-8s write %.3g  read %.3g  create %.3g  stat %.3g  read %.3g  unlink %.3g  setxattr %.3g  getxattr %.3g  link %.3g  symlink %.3g\n", n, $2/$13, $3/$14, $4/$15, $5/$16, $6/$17, $7/$18, $8/$19, $9/$20, $10/$21, $11/$22}'
}
echo
ratio local
ratio gluster
