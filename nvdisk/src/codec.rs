//! The record frame shared by every log nvdisk writes, and big-endian field helpers.
//!
//! Frame layout, version 1 (all integers big-endian):
//!
//! ```text
//!  0  magic    [u8; 4]  file kind and format version: b"NVP1" pool snapshot log,
//!                       b"NVW1" write-ahead log, b"NVJ1" committer journal
//!  4  kind     u8       record kind within that file
//!  5  pad      [u8; 3]  zero
//!  8  len      u32      payload bytes
//! 12  crc      u32      crc32 of bytes 4..12 followed by the payload
//! 16  payload  [u8; len], then zeros up to a multiple of 8
//! ```
//!
//! A frame whose magic, length or crc is wrong, or that is cut short, is not a record: in a log
//! that is the torn tail, where scanning stops. Decoding never panics on any input.
//!
//! An *intent* is the payload of a write kept for redo (pool snapshot log, write-ahead log):
//! `seq u64 | device offset u64 | data`.

use std::io::{self, Read};

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 16;

/// Bytes before the data in an intent payload.
pub(crate) const INTENT_HEADER: usize = 16;

/// Magic of the pool's snapshot log.
pub(crate) const POOL_LOG: [u8; 4] = *b"NVP1";
/// Magic of the sync-mode write-ahead log.
pub(crate) const WAL: [u8; 4] = *b"NVW1";
/// Magic of the committer's journals.
pub(crate) const JOURNAL: [u8; 4] = *b"NVJ1";

/// Record kind of an intent.
pub(crate) const KIND_INTENT: u8 = 1;

/// Bytes a frame with `payload` bytes occupies.
pub(crate) fn frame_len(payload: usize) -> usize {
    HEADER + payload.div_ceil(8) * 8
}

fn crc_of(head: &[u8], parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Writes a frame whose payload is `parts` concatenated into the front of `out`; returns its
/// length. `out` must hold [`frame_len`] bytes.
pub(crate) fn write_frame(out: &mut [u8], magic: [u8; 4], kind: u8, parts: &[&[u8]]) -> usize {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let total = frame_len(len);
    let out = &mut out[..total];
    out[0..4].copy_from_slice(&magic);
    out[4] = kind;
    out[5..8].fill(0);
    out[8..12].copy_from_slice(&(len as u32).to_be_bytes());
    let crc = crc_of(&out[4..12], parts);
    out[12..16].copy_from_slice(&crc.to_be_bytes());
    let mut at = HEADER;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    out[at..].fill(0);
    total
}

/// Appends a frame to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, magic: [u8; 4], kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let start = out.len();
    out.resize(start + frame_len(len), 0);
    write_frame(&mut out[start..], magic, kind, parts);
}

/// What lies at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, checksummed record of `size` bytes (padding included).
    Frame {
        kind: u8,
        payload: &'a [u8],
        size: usize,
    },
    /// The buffer ends inside a frame.
    Incomplete,
    /// Not a frame of this magic: wrong magic, length over `max_len`, or a crc mismatch.
    Invalid,
}

/// Decodes the frame at the front of `buf`.
pub(crate) fn decode(buf: &[u8], magic: [u8; 4], max_len: usize) -> Decoded<'_> {
    if buf.len() < HEADER {
        return Decoded::Incomplete;
    }
    if buf[0..4] != magic {
        return Decoded::Invalid;
    }
    let len = be_u32(&buf[8..12]) as usize;
    if len > max_len {
        return Decoded::Invalid;
    }
    let size = frame_len(len);
    if buf.len() < size {
        return Decoded::Incomplete;
    }
    let payload = &buf[HEADER..HEADER + len];
    if crc_of(&buf[4..12], &[payload]) != be_u32(&buf[12..16]) {
        return Decoded::Invalid;
    }
    Decoded::Frame {
        kind: buf[4],
        payload,
        size,
    }
}

/// Reads the next frame from a stream into `payload`; `Ok(None)` at the end of the records
/// (end of file, a torn frame, or bytes that are not a frame).
pub(crate) fn read_frame(
    r: &mut impl Read,
    magic: [u8; 4],
    max_len: usize,
    payload: &mut Vec<u8>,
) -> io::Result<Option<u8>> {
    let mut head = [0u8; HEADER];
    if !read_full(r, &mut head)? || head[0..4] != magic {
        return Ok(None);
    }
    let len = be_u32(&head[8..12]) as usize;
    if len > max_len {
        return Ok(None);
    }
    payload.resize(frame_len(len) - HEADER, 0);
    if !read_full(r, payload)? {
        return Ok(None);
    }
    payload.truncate(len);
    if crc_of(&head[4..12], &[payload]) != be_u32(&head[12..16]) {
        return Ok(None);
    }
    Ok(Some(head[4]))
}

/// Fills `buf`; `Ok(false)` if the stream ends first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// An intent decoded from a frame payload.
pub(crate) struct Intent<'a> {
    pub seq: u64,
    pub offset: u64,
    pub data: &'a [u8],
}

/// Splits an intent payload; `None` if it is too short to be one.
pub(crate) fn parse_intent(payload: &[u8]) -> Option<Intent<'_>> {
    if payload.len() < INTENT_HEADER {
        return None;
    }
    Some(Intent {
        seq: be_u64(&payload[0..8]),
        offset: be_u64(&payload[8..16]),
        data: &payload[INTENT_HEADER..],
    })
}

/// Big-endian u32 from the first 4 bytes of `b` (callers pass exact slices).
pub(crate) fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Big-endian u64 from the first 8 bytes of `b`.
pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_frame(&mut v, WAL, KIND_INTENT, &[payload]);
        v
    }

    #[test]
    fn round_trip_and_padding() {
        for n in [0usize, 1, 7, 8, 9, 4096] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let f = frame(&payload);
            assert_eq!(f.len(), frame_len(n));
            assert_eq!(f.len() % 8, 0);
            match decode(&f, WAL, 1 << 20) {
                Decoded::Frame {
                    kind,
                    payload: p,
                    size,
                } => {
                    assert_eq!((kind, p, size), (KIND_INTENT, &payload[..], f.len()))
                }
                other => panic!("{other:?}"),
            }
            let mut out = Vec::new();
            let kind = read_frame(&mut &f[..], WAL, 1 << 20, &mut out).unwrap();
            assert_eq!((kind, &out[..]), (Some(KIND_INTENT), &payload[..]));
        }
    }

    #[test]
    fn truncation_is_incomplete_and_never_a_record() {
        let f = frame(b"hello, journal");
        for cut in 0..f.len() {
            assert_eq!(
                decode(&f[..cut], WAL, 1 << 20),
                Decoded::Incomplete,
                "cut {cut}"
            );
            let mut out = Vec::new();
            assert_eq!(
                read_frame(&mut &f[..cut], WAL, 1 << 20, &mut out).unwrap(),
                None
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let f = frame(b"0123456789abcdef-payload");
        let payload_end = HEADER + 24;
        for byte in 0..payload_end {
            for bit in 0..8 {
                let mut g = f.clone();
                g[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&g, WAL, 1 << 20), Decoded::Frame { .. }),
                    "flip {byte}.{bit} accepted"
                );
            }
        }
        assert_eq!(decode(&f, POOL_LOG, 1 << 20), Decoded::Invalid);
        assert_eq!(decode(&f, WAL, 4), Decoded::Invalid);
    }

    #[test]
    fn random_bytes_never_panic_and_never_overrun() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut frames = 0;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            // Half the time give it a valid magic so the length and crc paths run.
            if x.is_multiple_of(2) && buf.len() >= 4 {
                buf[0..4].copy_from_slice(&WAL);
            }
            if let Decoded::Frame { payload, size, .. } = decode(&buf, WAL, 1 << 20) {
                assert!(size <= buf.len() && HEADER + payload.len() <= size);
                frames += 1;
            }
            let mut out = Vec::new();
            if read_frame(&mut &buf[..], WAL, 1 << 20, &mut out)
                .unwrap()
                .is_some()
            {
                frames += 1;
            }
        }
        // A random 32-bit crc matching by chance would be a one-in-four-billion event.
        assert_eq!(frames, 0);
    }
}
