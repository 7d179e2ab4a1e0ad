//! Identifiers shared by every crate: object ids, OSD ids, pools and placement groups.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A 128-bit object id. Printed and parsed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Oid(pub u128);

impl Oid {
    /// The id a human-readable name hashes to (xxh3-128: stable across versions and machines).
    pub fn from_name(name: &str) -> Oid {
        Oid(xxhash_rust::xxh3::xxh3_128(name.as_bytes()))
    }

    /// Big-endian bytes, so keys built from ids sort the way the ids do.
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(b: [u8; 16]) -> Oid {
        Oid(u128::from_be_bytes(b))
    }

    /// A 64-bit hash of the id, used to choose its placement group.
    pub fn placement_hash(self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.to_be_bytes())
    }

    /// The id of piece `index` of a striped owner (a block volume or a file): the top byte is the
    /// owner's kind, the next 56 bits its id, the low 64 bits the piece index. Named objects hash
    /// into the whole space, so a collision with one of these is as unlikely as any other.
    pub fn for_piece(kind: PieceKind, owner: u64, index: u64) -> Oid {
        let owner = u128::from(owner & ((1u64 << 56) - 1));
        Oid((u128::from(kind as u8) << 120) | (owner << 64) | u128::from(index))
    }

    /// The kind, owner and index of a piece id made by [`Oid::for_piece`] (`None` when the top
    /// byte names no kind: a hashed name, most likely).
    pub fn piece(self) -> Option<(PieceKind, u64, u64)> {
        let kind = match (self.0 >> 120) as u8 {
            k if k == PieceKind::Volume as u8 => PieceKind::Volume,
            k if k == PieceKind::File as u8 => PieceKind::File,
            _ => return None,
        };
        let owner = (self.0 >> 64) as u64 & ((1u64 << 56) - 1);
        Some((kind, owner, self.0 as u64))
    }

    /// Parse 32 hex digits, or else hash the string as a name. The bool says whether it was hashed.
    pub fn parse_or_hash(s: &str) -> (Oid, bool) {
        match s.parse() {
            Ok(oid) => (oid, false),
            Err(_) => (Oid::from_name(s), true),
        }
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({:032x})", self.0)
    }
}

/// What a striped object belongs to (see [`Oid::for_piece`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PieceKind {
    Volume = 0xB1,
    File = 0xF1,
}

/// Returned when a string is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object id must be 32 hex digits, got {0:?}")]
pub struct BadOid(pub String);

impl FromStr for Oid {
    type Err = BadOid;
    fn from_str(s: &str) -> Result<Oid, BadOid> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadOid(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(Oid)
            .map_err(|_| BadOid(s.to_string()))
    }
}

/// An object storage device id, assigned by the metadata service when the OSD first boots.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug, Default,
)]
pub struct OsdId(pub u32);

impl fmt::Display for OsdId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "osd.{}", self.0)
    }
}

/// A pool id, assigned by the metadata service.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug, Default,
)]
pub struct PoolId(pub u32);

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A placement group: `seed = hash(oid) mod pg_num` within a pool. Printed as `pool.seed` (hex seed, as Ceph).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug, Default,
)]
pub struct PgId {
    pub pool: PoolId,
    pub seed: u32,
}

impl PgId {
    pub fn new(pool: PoolId, seed: u32) -> PgId {
        PgId { pool, seed }
    }

    /// Big-endian key bytes (pool, seed) so per-PG key ranges are contiguous.
    pub fn to_be_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.pool.0.to_be_bytes());
        b[4..].copy_from_slice(&self.seed.to_be_bytes());
        b
    }

    pub fn from_be_bytes(b: [u8; 8]) -> PgId {
        PgId {
            pool: PoolId(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            seed: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl fmt::Display for PgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:x}", self.pool.0, self.seed)
    }
}

/// A metadata replica's raft node id.
pub type NodeId = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_round_trips_through_hex() {
        let oid = Oid(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = oid.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<Oid>().unwrap(), oid);
        assert!("xyz".parse::<Oid>().is_err());
        assert!("0123456789abcdef001122334455667".parse::<Oid>().is_err());
    }

    #[test]
    fn piece_ids_keep_their_parts() {
        let a = Oid::for_piece(PieceKind::Volume, 7, 3);
        assert_eq!(a.0 >> 120, 0xB1);
        assert_eq!((a.0 >> 64) as u64 & ((1 << 56) - 1), 7);
        assert_eq!(a.0 as u64, 3);
        assert_ne!(a, Oid::for_piece(PieceKind::File, 7, 3));
        assert_eq!(a.piece(), Some((PieceKind::Volume, 7, 3)));
        let f = Oid::for_piece(PieceKind::File, (1 << 56) - 1, u64::MAX);
        assert_eq!(f.piece(), Some((PieceKind::File, (1 << 56) - 1, u64::MAX)));
        assert_eq!(Oid(0).piece(), None);
    }

    #[test]
    fn names_hash_stably() {
        let (a, hashed) = Oid::parse_or_hash("hello");
        assert!(hashed);
        assert_eq!(a, Oid::from_name("hello"));
        assert_ne!(a, Oid::from_name("hello2"));
        let (b, hashed) = Oid::parse_or_hash(&a.to_string());
        assert!(!hashed);
        assert_eq!(a, b);
    }

    #[test]
    fn pg_key_bytes_round_trip_and_sort() {
        let a = PgId::new(PoolId(1), 7);
        let b = PgId::new(PoolId(1), 300);
        let c = PgId::new(PoolId(2), 0);
        assert_eq!(PgId::from_be_bytes(a.to_be_bytes()), a);
        assert!(a.to_be_bytes() < b.to_be_bytes());
        assert!(b.to_be_bytes() < c.to_be_bytes());
    }
}
