#!/usr/bin/env bash
# Installs what the tests need and runs cairn's whole test suite.
#
#   scripts/test.sh            # install packages (Debian, as root or with sudo), build, test
#   CAIRN_SKIP_INSTALL=1 ...   # skip the package step
#
# Needs: a Rust toolchain (cargo). Installs: libiscsi-bin (iscsi-test-cu, iscsi-ls, iscsi-inq,
# iscsi-perf), fuse3 (fusermount3), fio, libnfs-utils (nfs-ls, nfs-cp), the S3 clients the S3
# tests drive (python3-boto3, s3cmd, rclone), rsync, git and the other command-line tools the
# file-system tests drive.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(libiscsi-bin fuse3 fio libnfs-utils rsync git tar diffutils util-linux procps coreutils python3
          python3-boto3 s3cmd rclone openssl)

install_packages() {
    if [ "${CAIRN_SKIP_INSTALL:-}" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
        return
    fi
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    echo "==> installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

install_packages

# The S3 tests run `python3 -c 'import boto3'`: a python3 ahead of Debian's on PATH (pyenv, a
# venv) may lack it even when python3-boto3 is installed.
if [ "${CAIRN_SKIP_INSTALL:-}" != 1 ] && ! python3 -c 'import boto3' 2>/dev/null; then
    echo "==> installing boto3 for $(command -v python3)"
    python3 -m pip install --quiet boto3 </dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build (the cairn binary is used by the multi-process tests)"
cargo build --workspace --all-targets --locked

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast -- --test-threads=2
fi
