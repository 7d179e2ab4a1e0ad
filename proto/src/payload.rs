//! Payloads (object data) that cross a frame or a journal record without being copied.
//!
//! A message's payload fields are `Bytes` marked `#[serde(with = "crate::payload")]`. With
//! bincode they encode exactly as `Bytes` does (a length, then the bytes), so the wire and
//! journal formats do not change; what changes is where the bytes go:
//!
//! - **Decoding** ([`decode_from`]): the body being decoded is a `Bytes` (a frame cut from the
//!   receive buffer), and a payload field becomes a slice of it, sharing its allocation, instead
//!   of a copy.
//! - **Encoding** ([`encode_segments`]): a payload of at least [`SEGMENT_MIN`] bytes is not
//!   copied into the output buffer; the output is a list of segments (the encoded envelope in
//!   pieces, and the payloads themselves) for a vectored write to a socket or a file.
//!
//! Both work through a thread-local that is set only for the duration of one bincode call on
//! this thread; any other serializer (JSON for the CLI, `serialized_size`) sees plain bytes.

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{Deserializer, Visitor};
use serde::ser::Serializer;
use std::cell::{Cell, RefCell};

/// Payloads at least this long are passed by reference when encoding into segments; shorter
/// ones are cheaper to copy than to give a segment of their own.
pub const SEGMENT_MIN: usize = 16 << 10;

thread_local! {
    /// The buffer a [`decode_from`] call is decoding, if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    /// The segments of an [`encode_segments`] call: the payloads taken by reference, each with
    /// the offset in the envelope buffer where it belongs.
    static SINK: RefCell<Option<Vec<(usize, Bytes)>>> = const { RefCell::new(None) };
    /// How many bytes the envelope writer of an [`encode_segments`] call has taken so far.
    static WRITTEN: Cell<usize> = const { Cell::new(0) };
}

pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    let taken = data.len() >= SEGMENT_MIN
        && SINK.with(|sink| sink.borrow().is_some())
        && !s.is_human_readable();
    if !taken {
        return s.serialize_bytes(data);
    }
    // bincode writes a byte string as its length (in the integer encoding of its options, the
    // same as a u64's) followed by the bytes: write the length, and leave the bytes to the
    // segment list, at the position the envelope has reached after the length.
    let r = s.serialize_u64(data.len() as u64)?;
    let at = WRITTEN.with(Cell::get);
    SINK.with(|sink| {
        if let Some(v) = sink.borrow_mut().as_mut() {
            v.push((at, data.clone()));
        }
    });
    Ok(r)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    d.deserialize_bytes(PayloadVisitor)
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(SOURCE.with(|src| match src.borrow().as_ref() {
            Some(src) if contains(src, v) => src.slice_ref(v),
            _ => Bytes::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Bytes::from(v))
    }
}

/// Whether `part` lies inside `whole`'s bytes (so `whole.slice_ref(part)` is valid).
fn contains(whole: &Bytes, part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

/// Decode `body` with `opts`; payload fields become slices of `body`.
pub fn decode_from<T, O>(opts: O, body: &Bytes) -> bincode::Result<T>
where
    T: serde::de::DeserializeOwned,
    O: Options,
{
    let previous = SOURCE.with(|src| src.replace(Some(body.clone())));
    let r = opts.deserialize(body);
    SOURCE.with(|src| *src.borrow_mut() = previous);
    r
}

/// A message encoded as segments in order: envelope pieces and payloads taken by reference.
#[derive(Debug, Default)]
pub struct Segments {
    pub parts: Vec<Bytes>,
}

impl Segments {
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// The crc32 of all the segments' bytes in order.
    pub fn crc32(&self) -> crc32fast::Hasher {
        let mut h = crc32fast::Hasher::new();
        for p in &self.parts {
            h.update(p);
        }
        h
    }

    /// All the bytes in one buffer (for tests and small messages).
    pub fn concat(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

/// Counts what the serializer writes, so a payload knows where in the envelope it belongs.
struct Counting<'a>(&'a mut BytesMut);

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.put_slice(buf);
        WRITTEN.with(|w| w.set(w.get() + buf.len()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encode `msg` with `opts` into segments after `prefix` (which is the first segment's start):
/// the bytes are exactly those of `opts.serialize(msg)`, with payloads of at least
/// [`SEGMENT_MIN`] bytes left where they are.
pub fn encode_segments<T, O>(opts: O, prefix: &[u8], msg: &T) -> bincode::Result<Segments>
where
    T: serde::Serialize,
    O: Options,
{
    let mut env = BytesMut::with_capacity(prefix.len() + 256);
    env.put_slice(prefix);
    let previous_sink = SINK.with(|s| s.replace(Some(Vec::new())));
    let previous_written = WRITTEN.with(|w| w.replace(0));
    // Without a limit: with one, bincode first walks the message with a size counter, which
    // would take the payloads into the segment list a first time.
    let r = opts.with_no_limit().serialize_into(Counting(&mut env), msg);
    let taken = SINK.with(|s| std::mem::replace(&mut *s.borrow_mut(), previous_sink));
    WRITTEN.with(|w| w.set(previous_written));
    r?;
    let taken = taken.unwrap_or_default();
    let mut parts = Vec::with_capacity(2 * taken.len() + 1);
    let mut env = env.freeze();
    let mut consumed = 0;
    for (at, payload) in taken {
        let at = at + prefix.len();
        parts.push(env.split_to(at - consumed));
        consumed = at;
        parts.push(payload);
    }
    parts.push(env);
    parts.retain(|p| !p.is_empty());
    Ok(Segments { parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        a: u32,
        #[serde(with = "crate::payload")]
        big: Bytes,
        s: String,
        #[serde(with = "crate::payload")]
        small: Bytes,
        #[serde(with = "crate::payload")]
        big2: Bytes,
        z: u64,
    }

    fn msg() -> Msg {
        Msg {
            a: 7,
            big: Bytes::from(vec![1u8; SEGMENT_MIN + 3]),
            s: "name".into(),
            small: Bytes::from_static(b"xyz"),
            big2: Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<_>>()),
            z: u64::MAX - 5,
        }
    }

    #[test]
    fn segments_are_the_same_bytes_as_plain_encoding_in_both_int_encodings() {
        let m = msg();
        let varint = bincode::DefaultOptions::new();
        let plain = varint.serialize(&m).unwrap();
        let seg = encode_segments(varint, b"HEAD", &m).unwrap();
        assert_eq!(seg.concat(), [b"HEAD".as_slice(), &plain].concat());
        // The two big payloads are passed by reference, not copied.
        assert!(seg.parts.iter().any(|p| p.as_ptr() == m.big.as_ptr()));
        assert!(seg.parts.iter().any(|p| p.as_ptr() == m.big2.as_ptr()));
        let fixint = bincode::DefaultOptions::new().with_fixint_encoding();
        let plain = fixint.serialize(&m).unwrap();
        let seg = encode_segments(fixint, b"", &m).unwrap();
        assert_eq!(seg.concat(), plain);
        let mut h = crc32fast::Hasher::new();
        h.update(&plain);
        assert_eq!(seg.crc32().finalize(), h.finalize());
    }

    #[test]
    fn decoding_from_a_buffer_slices_the_payloads_out_of_it() {
        let m = msg();
        let opts = bincode::DefaultOptions::new();
        let body = Bytes::from(opts.serialize(&m).unwrap());
        let got: Msg = decode_from(opts, &body).unwrap();
        assert_eq!(got, m);
        assert!(contains(&body, &got.big) && contains(&body, &got.big2));
        // Outside decode_from, a payload is a copy of its own (nothing refers to a stale source).
        let copy: Msg = opts.deserialize(&body).unwrap();
        assert_eq!(copy, m);
        assert!(!contains(&body, &copy.big));
    }

    #[test]
    fn truncated_or_garbage_bodies_are_errors_not_panics() {
        let opts = bincode::DefaultOptions::new().with_limit(1 << 20);
        let body = opts.serialize(&msg()).unwrap();
        for cut in [0, 1, 5, 10, body.len() / 2, body.len() - 1] {
            let b = Bytes::copy_from_slice(&body[..cut]);
            assert!(decode_from::<Msg, _>(opts, &b).is_err());
        }
        let mut bad = body.clone();
        bad[4] = 0xff;
        bad[5] = 0xff;
        let _ = decode_from::<Msg, _>(opts, &Bytes::from(bad));
    }

    #[test]
    fn json_sees_plain_bytes() {
        let m = msg();
        let j = serde_json::to_string(&m).unwrap();
        let back: Msg = serde_json::from_str(&j).unwrap();
        assert_eq!(back, m);
    }
}
