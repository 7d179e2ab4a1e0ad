#!/usr/bin/env bash
# Issue 18's migration race, many seeds: runs tests/tests/fs_migrate_race.rs once per seed.
#
#   bench/migrate_race.sh [FIRST_SEED] [COUNT]
#
# Each seed moves ~1,550 files to another pool with a gateway migrator and `cairn fs migrate`
# running at once, a pin/unpin in the middle and a writer and readers on two FUSE mounts, then
# compares every byte through FUSE, S3 and NFS. About 2-3 minutes per seed on 2 cores. Needs what
# scripts/test.sh installs (fuse3, libnfs-utils, python3-boto3).
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
FIRST=${1:-1}
COUNT=${2:-5}
SEEDS=$(seq -s, "$FIRST" $((FIRST + COUNT - 1)))
echo "seeds $SEEDS; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
CAIRN_MIGRATE_SEEDS=$SEEDS cargo nextest run -p cairn-tests --test fs_migrate_race --no-capture
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
