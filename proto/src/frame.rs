//! The frame codec.
//!
//! Every message on every cairn TCP port travels in one frame:
//!
//! ```text
//! offset size  field
//!  0      4    magic  b"CRN1"
//!  4      1    version (1)
//!  5      1    kind: 0 request, 1 response
//!  6      2    opcode (request family, see msg::opcode; 0x8000 for responses)
//!  8      8    request id (a response carries its request's id)
//! 16      4    body length (at most MAX_BODY)
//! 20      4    crc32 of the body
//! 24      4    crc32 of bytes 0..24
//! 28      n    body: bincode of a Request or Response
//! ```
//! All integers big-endian. A header that fails its checks cannot be trusted to say where the next
//! frame starts, so the connection is answered with an error and closed; a body that fails its
//! checksum or does not decode is answered with an error for that request id and the connection
//! goes on.

use crate::error::FrameFault;
use crate::msg::{opcode, Request, Response};
use crate::payload::{self, Segments};
use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 4] = *b"CRN1";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 28;
/// Largest body: 64 MiB of data plus room for the envelope.
pub const MAX_BODY: usize = (64 << 20) + (1 << 20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request = 0,
    Response = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub opcode: u16,
    pub id: u64,
    pub body_len: u32,
    pub body_crc: u32,
}

/// The result of looking at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Need more bytes.
    Incomplete,
    /// A whole frame: its header, its body, and how many bytes it took.
    Frame {
        header: Header,
        body: &'a [u8],
        len: usize,
    },
}

/// A frame fault with the request id when the header was good enough to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame fault {fault:?} (request id {id:?})")]
pub struct FrameError {
    pub fault: FrameFault,
    /// `Some` when only the body was bad: the connection can go on after `skip` bytes.
    pub id: Option<u64>,
    pub skip: usize,
}

fn bincode_opts() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_BODY as u64)
        .reject_trailing_bytes()
}

/// The length of the frame at the front of `buf` once its header is there (whether the header
/// is valid is [`parse`]'s to say), so a reader can make room for all of it at once instead of
/// growing its buffer (and copying what it holds) step by step.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let body_len = u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]]) as usize;
    Some(HEADER_LEN + body_len.min(MAX_BODY))
}

/// Parse one frame from the front of `buf`. Never panics on any input.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(Parsed::Incomplete);
    }
    let fatal = |fault| FrameError {
        fault,
        id: None,
        skip: 0,
    };
    let h = &buf[..HEADER_LEN];
    let hcrc = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
    if h[0..4] != MAGIC {
        return Err(fatal(FrameFault::BadMagic));
    }
    if crc32fast::hash(&h[..24]) != hcrc {
        return Err(fatal(FrameFault::HeaderChecksum));
    }
    if h[4] != VERSION {
        return Err(fatal(FrameFault::BadVersion));
    }
    let kind = match h[5] {
        0 => Kind::Request,
        1 => Kind::Response,
        _ => return Err(fatal(FrameFault::BadKind)),
    };
    let opcode = u16::from_be_bytes([h[6], h[7]]);
    let id = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes"));
    let body_len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    let body_crc = u32::from_be_bytes([h[20], h[21], h[22], h[23]]);
    if body_len as usize > MAX_BODY {
        return Err(fatal(FrameFault::TooLarge));
    }
    let len = HEADER_LEN + body_len as usize;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[HEADER_LEN..len];
    let soft = |fault| FrameError {
        fault,
        id: Some(id),
        skip: len,
    };
    if crc32fast::hash(body) != body_crc {
        return Err(soft(FrameFault::BodyChecksum));
    }
    if kind == Kind::Request && !opcode::is_known_request(opcode) {
        return Err(soft(FrameFault::UnknownOpcode));
    }
    Ok(Parsed::Frame {
        header: Header {
            kind,
            opcode,
            id,
            body_len,
            body_crc,
        },
        body,
        len,
    })
}

/// Append a frame with the given body to `out`.
pub fn encode_raw(out: &mut BytesMut, kind: Kind, opcode: u16, id: u64, body: &[u8]) {
    out.reserve(HEADER_LEN + body.len());
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    out.put_slice(body);
    seal(out, start, kind, opcode, id);
}

/// Write the header of the frame at `out[start..]`, whose body follows the header's space.
fn seal(out: &mut BytesMut, start: usize, kind: Kind, opcode: u16, id: u64) {
    let body_len = out.len() - start - HEADER_LEN;
    let body_crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    write_header(
        &mut out[start..start + HEADER_LEN],
        kind,
        opcode,
        id,
        body_len,
        body_crc,
    );
}

fn write_header(h: &mut [u8], kind: Kind, opcode: u16, id: u64, body_len: usize, body_crc: u32) {
    h[..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[5] = kind as u8;
    h[6..8].copy_from_slice(&opcode.to_be_bytes());
    h[8..16].copy_from_slice(&id.to_be_bytes());
    h[16..20].copy_from_slice(&(body_len as u32).to_be_bytes());
    h[20..24].copy_from_slice(&body_crc.to_be_bytes());
    let hcrc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&hcrc.to_be_bytes());
}

/// Errors encoding a message (a message too large for one frame).
#[derive(Debug, thiserror::Error)]
#[error("message does not fit in a frame: {0}")]
pub struct EncodeError(#[from] bincode::Error);

/// Append a frame whose body is `msg` encoded straight into `out` (no intermediate buffer: a
/// payload is copied once). On error `out` is left as it was.
fn encode_msg<T: serde::Serialize>(
    out: &mut BytesMut,
    kind: Kind,
    opcode: u16,
    id: u64,
    msg: &T,
) -> Result<(), EncodeError> {
    let size = bincode_opts().serialized_size(msg)? as usize;
    out.reserve(HEADER_LEN + size);
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    if let Err(e) = bincode_opts().serialize_into((&mut *out).writer(), msg) {
        out.truncate(start);
        return Err(e.into());
    }
    seal(out, start, kind, opcode, id);
    Ok(())
}

pub fn encode_request(out: &mut BytesMut, id: u64, req: &Request) -> Result<(), EncodeError> {
    encode_msg(out, Kind::Request, req.opcode(), id, req)
}

pub fn encode_response(out: &mut BytesMut, id: u64, resp: &Response) -> Result<(), EncodeError> {
    encode_msg(out, Kind::Response, opcode::RESPONSE, id, resp)
}

/// A frame as segments for a vectored write: the header and the encoded message, with the
/// payloads of at least [`payload::SEGMENT_MIN`] bytes shared rather than copied. The bytes
/// are exactly those [`encode_request`] / [`encode_response`] write.
fn encode_msg_segments<T: serde::Serialize>(
    kind: Kind,
    opcode: u16,
    id: u64,
    msg: &T,
) -> Result<Segments, EncodeError> {
    // The limit is checked here: with one, bincode would first walk the message to size it.
    let mut seg = payload::encode_segments(bincode_opts().with_no_limit(), &[], msg)?;
    let body_len = seg.len();
    if body_len > MAX_BODY {
        return Err(EncodeError(Box::new(bincode::ErrorKind::SizeLimit)));
    }
    let mut h = [0u8; HEADER_LEN];
    write_header(&mut h, kind, opcode, id, body_len, seg.crc32().finalize());
    seg.parts.insert(0, Bytes::copy_from_slice(&h));
    Ok(seg)
}

pub fn encode_request_segments(id: u64, req: &Request) -> Result<Segments, EncodeError> {
    encode_msg_segments(Kind::Request, req.opcode(), id, req)
}

pub fn encode_response_segments(id: u64, resp: &Response) -> Result<Segments, EncodeError> {
    encode_msg_segments(Kind::Response, opcode::RESPONSE, id, resp)
}

/// Decode a request body; the opcode in the header must name the decoded family.
pub fn decode_request(header: &Header, body: &[u8]) -> Result<Request, FrameFault> {
    let req: Request = bincode_opts()
        .deserialize(body)
        .map_err(|_| FrameFault::BadBody)?;
    if req.opcode() != header.opcode {
        return Err(FrameFault::UnknownOpcode);
    }
    Ok(req)
}

pub fn decode_response(body: &[u8]) -> Result<Response, FrameFault> {
    bincode_opts()
        .deserialize(body)
        .map_err(|_| FrameFault::BadBody)
}

/// As [`decode_request`], from a frame cut off the receive buffer: payloads become slices of
/// `body` instead of copies.
pub fn decode_request_bytes(header: &Header, body: &Bytes) -> Result<Request, FrameFault> {
    let req: Request =
        payload::decode_from(bincode_opts(), body).map_err(|_| FrameFault::BadBody)?;
    if req.opcode() != header.opcode {
        return Err(FrameFault::UnknownOpcode);
    }
    Ok(req)
}

/// As [`decode_response`], with payloads sliced out of `body`.
pub fn decode_response_bytes(body: &Bytes) -> Result<Response, FrameFault> {
    payload::decode_from(bincode_opts(), body).map_err(|_| FrameFault::BadBody)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Oid, PoolId};
    use crate::msg::OsdRequest;
    use crate::object::ObjOp;
    use rand::{Rng, SeedableRng};

    fn sample() -> Request {
        Request::Osd(OsdRequest::Mutate {
            epoch: 7,
            pool: PoolId(1),
            oid: Oid(42),
            op: ObjOp::Write {
                offset: 5,
                data: bytes::Bytes::from_static(b"hello"),
            },
            fence: None,
        })
    }

    #[test]
    fn segments_are_the_bytes_of_the_plain_frame_and_decode_from_a_buffer() {
        for n in [0, 5, crate::payload::SEGMENT_MIN, 3 << 20] {
            let req = Request::Osd(OsdRequest::Mutate {
                epoch: 7,
                pool: PoolId(1),
                oid: Oid(42),
                op: ObjOp::WriteFull {
                    data: bytes::Bytes::from(vec![0x5a; n]),
                },
                fence: None,
            });
            let mut plain = BytesMut::new();
            encode_request(&mut plain, 3, &req).unwrap();
            let seg = encode_request_segments(3, &req).unwrap();
            assert_eq!(seg.concat(), plain.to_vec(), "size {n}");
            let frame = bytes::Bytes::from(seg.concat());
            let Parsed::Frame { header, .. } = parse(&frame).unwrap() else {
                panic!()
            };
            let body = frame.slice(HEADER_LEN..);
            assert_eq!(decode_request_bytes(&header, &body).unwrap(), req);
            let resp = Response::Osd(crate::msg::OsdResponse::Data(bytes::Bytes::from(vec![
                9;
                n
            ])));
            let mut plain = BytesMut::new();
            encode_response(&mut plain, 4, &resp).unwrap();
            let seg = encode_response_segments(4, &resp).unwrap();
            assert_eq!(seg.concat(), plain.to_vec());
            let body = bytes::Bytes::from(seg.concat()).slice(HEADER_LEN..);
            assert_eq!(decode_response_bytes(&body).unwrap(), resp);
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, 9, &sample()).unwrap();
        encode_response(&mut buf, 9, &Response::Pong).unwrap();
        let Parsed::Frame { header, body, len } = parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(header.id, 9);
        assert_eq!(decode_request(&header, body).unwrap(), sample());
        let Parsed::Frame { header, body, .. } = parse(&buf[len..]).unwrap() else {
            panic!()
        };
        assert_eq!(header.kind, Kind::Response);
        assert_eq!(decode_response(body).unwrap(), Response::Pong);
    }

    #[test]
    fn encoding_in_place_matches_encoding_a_body_and_refuses_oversize_cleanly() {
        let mut direct = BytesMut::from(&b"xyz"[..]);
        encode_request(&mut direct, 4, &sample()).unwrap();
        let mut raw = BytesMut::from(&b"xyz"[..]);
        let body = bincode_opts().serialize(&sample()).unwrap();
        encode_raw(&mut raw, Kind::Request, sample().opcode(), 4, &body);
        assert_eq!(direct, raw);
        let huge = Request::Osd(OsdRequest::Mutate {
            epoch: 1,
            pool: PoolId(1),
            oid: Oid(1),
            op: ObjOp::WriteFull {
                data: bytes::Bytes::from(vec![0u8; MAX_BODY + 1]),
            },
            fence: None,
        });
        assert!(encode_request(&mut direct, 5, &huge).is_err());
        assert_eq!(direct, raw, "a refused message left bytes behind");
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, 1, &sample()).unwrap();
        for n in 0..buf.len() {
            assert_eq!(parse(&buf[..n]).unwrap(), Parsed::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn header_faults_are_fatal_body_faults_are_not() {
        let mut buf = BytesMut::new();
        encode_request(&mut buf, 3, &sample()).unwrap();
        let mut bad = buf.to_vec();
        bad[0] = b'X';
        assert_eq!(parse(&bad).unwrap_err().fault, FrameFault::BadMagic);
        let mut bad = buf.to_vec();
        bad[17] ^= 1; // length
        assert_eq!(parse(&bad).unwrap_err().fault, FrameFault::HeaderChecksum);
        let mut bad = buf.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        let e = parse(&bad).unwrap_err();
        assert_eq!(
            (e.fault, e.id, e.skip),
            (FrameFault::BodyChecksum, Some(3), buf.len())
        );
        // A huge length with a valid header checksum.
        let mut big = BytesMut::new();
        encode_raw(&mut big, Kind::Request, opcode::OSD, 1, b"");
        let mut b = big.to_vec();
        b[16..20].copy_from_slice(&(u32::MAX).to_be_bytes());
        let c = crc32fast::hash(&b[..24]);
        b[24..28].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse(&b).unwrap_err().fault, FrameFault::TooLarge);
        // Unknown opcode with a good body.
        let mut u = BytesMut::new();
        encode_raw(&mut u, Kind::Request, 999, 4, b"");
        let e = parse(&u).unwrap_err();
        assert_eq!((e.fault, e.id), (FrameFault::UnknownOpcode, Some(4)));
        // Good frame, body of the wrong family.
        let mut w = BytesMut::new();
        let body = bincode_opts().serialize(&sample()).unwrap();
        encode_raw(&mut w, Kind::Request, opcode::META, 5, &body);
        let Parsed::Frame { header, body, .. } = parse(&w).unwrap() else {
            panic!()
        };
        assert_eq!(
            decode_request(&header, body).unwrap_err(),
            FrameFault::UnknownOpcode
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut good = BytesMut::new();
        encode_request(&mut good, 1, &sample()).unwrap();
        for _ in 0..20_000 {
            let mut b = good.to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b.truncate(rng.gen_range(0..=b.len()));
            if let Ok(Parsed::Frame { header, body, .. }) = parse(&b) {
                let _ = decode_request(&header, body);
            }
            let junk: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let _ = parse(&junk);
        }
        // A valid header over a garbage body decodes to an error, not a panic.
        for _ in 0..2000 {
            let junk: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            let mut f = BytesMut::new();
            encode_raw(&mut f, Kind::Request, opcode::OSD, 1, &junk);
            if let Ok(Parsed::Frame { header, body, .. }) = parse(&f) {
                let _ = decode_request(&header, body);
            }
        }
    }
}
