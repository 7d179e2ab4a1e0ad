#!/usr/bin/env python3
"""Load and checks for tests/tests/fs_migrate_race.rs, run as separate processes so that a
test thread blocked in FUSE never stalls the test's own forks.

  migrate_load.py writer MOUNT_DIR REF_DIR STOP_FILE SEED
      Rewrites the files under MOUNT_DIR/w/ (names from REF_DIR/w/) with new random bytes,
      one after another, each with write + fsync + close; after each acknowledged rewrite the
      same bytes replace REF_DIR/w/NAME (tmp + rename). Stops when STOP_FILE exists. Prints
      "writes N" and exits 1 on the first failed write.

  migrate_load.py reader MOUNT_DIR REF_DIR STOP_FILE SEED
      Reads random files of REF_DIR (not under w/) through MOUNT_DIR and compares them with
      REF_DIR until STOP_FILE exists. Prints "reads N" and one "MISMATCH path" line per
      differing read; exits 1 if any differed.

  migrate_load.py s3verify BUCKET REF_DIR
      Lists bucket BUCKET (CAIRN_S3_ENDPOINT, CAIRN_S3_AK, CAIRN_S3_SK) and compares every
      object with REF_DIR, and every file of REF_DIR with an object. Prints "s3 checked N" and
      one line per difference; exits 1 if any.
"""
import os
import random
import sys
import time


def ref_files(ref):
    out = []
    for root, _dirs, files in os.walk(ref):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), ref))
    return sorted(out)


def writer(mount, ref, stop, seed):
    rng = random.Random(seed)
    names = sorted(os.listdir(os.path.join(ref, "w")))
    n = 0
    deadline = time.monotonic() + 1200
    while not os.path.exists(stop) and time.monotonic() < deadline:
        name = rng.choice(names)
        data = rng.randbytes(rng.choice([300, 5000, 70000, 300000]))
        path = os.path.join(mount, "w", name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            print(f"WRITE FAILED {path}: {e}", flush=True)
            print(f"writes {n}", flush=True)
            return 1
        tmp = os.path.join(ref, "w", "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(ref, "w", name))
        n += 1
    print(f"writes {n}", flush=True)
    return 0


def reader(mount, ref, stop, seed):
    rng = random.Random(seed)
    files = [f for f in ref_files(ref) if not f.startswith("w" + os.sep)]
    n = 0
    bad = 0
    deadline = time.monotonic() + 1200
    while not os.path.exists(stop) and time.monotonic() < deadline:
        rel = rng.choice(files)
        with open(os.path.join(ref, rel), "rb") as f:
            want = f.read()
        try:
            with open(os.path.join(mount, rel), "rb") as f:
                got = f.read()
        except OSError as e:
            print(f"MISMATCH {rel}: {e}", flush=True)
            bad += 1
            continue
        if got != want:
            zeros = sum(1 for a, b in zip(got, want) if a != b and a == 0)
            print(f"MISMATCH {rel}: {len(got)} bytes read, {len(want)} expected, "
                  f"{zeros} bytes read as 0 that are not", flush=True)
            bad += 1
        n += 1
    print(f"reads {n}", flush=True)
    return 1 if bad else 0


def s3verify(bucket, ref):
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["CAIRN_S3_ENDPOINT"],
        aws_access_key_id=os.environ["CAIRN_S3_AK"],
        aws_secret_access_key=os.environ["CAIRN_S3_SK"],
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 3}),
    )
    want = set(ref_files(ref))
    seen = set()
    bad = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            key = o["Key"]
            seen.add(key)
            path = os.path.join(ref, key)
            if key not in want:
                print(f"S3 EXTRA {key}", flush=True)
                bad += 1
                continue
            got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            with open(path, "rb") as f:
                if got != f.read():
                    print(f"S3 MISMATCH {key}", flush=True)
                    bad += 1
    for key in sorted(want - seen):
        print(f"S3 MISSING {key}", flush=True)
        bad += 1
    print(f"s3 checked {len(seen)}", flush=True)
    return 1 if bad else 0


def main():
    mode = sys.argv[1]
    if mode == "writer":
        return writer(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    if mode == "reader":
        return reader(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    if mode == "s3verify":
        return s3verify(sys.argv[2], sys.argv[3])
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
