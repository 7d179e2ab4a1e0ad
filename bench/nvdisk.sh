#!/usr/bin/env bash
# nvdisk vs fdatasync'ed file writes: 4 KiB random writes that are durable when acknowledged.
#
#   bench/nvdisk.sh [DIR]
#
# DIR must be on the disk under test (default: target-nvdisk/bench-tmp in the checkout).
# Runs nvdisk/examples/nvbench: nvdisk in each mode, an in-process pwrite+fdatasync loop, and
# (if installed; apt-get install -y fio) fio --fsync=1 and --fdatasync=1 on the same disk, the
# cases interleaved round by round so that a noisy neighbour on the disk hits them alike. Every
# figure is the median of RUNS rounds (default 3) of SECS seconds (default 3); ratios are against
# fio --fsync=1.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$PWD/target-nvdisk/bench-tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-nvdisk}
command -v fio >/dev/null || echo "fio not installed: ratios are against the in-process baseline" >&2
cargo build --quiet --release -p cairn-nvdisk --example nvbench
exec "$CARGO_TARGET_DIR/release/examples/nvbench" --dir "$DIR" --seconds "${SECS:-3}" \
    --runs "${RUNS:-3}" --size $((256 << 20))
