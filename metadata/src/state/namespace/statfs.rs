//! The whole-namespace counters STATFS reports: inodes in use and the sum of file sizes.

use super::*;

impl Namespace {
    /// Inodes in use and the sum of file sizes (modulo 2^64).
    pub(super) fn stats(&self) -> NsStats {
        NsStats {
            inodes: self.inodes.len() as u64,
            file_bytes: self.file_bytes,
        }
    }
}
