//! Reading PDUs off a byte stream with [`crate::pdu::parse`].

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::IscsiError;
use crate::pdu::{self, Digests, Pdu, PduError};

/// What the reader got.
#[derive(Debug)]
pub enum Frame {
    Pdu(Pdu),
    /// A PDU whose data digest failed: it has been skipped; the header is kept for the Reject.
    BadDataDigest([u8; pdu::BHS_LEN]),
}

/// Buffers a stream and frames PDUs out of it.
pub struct PduReader<R> {
    rd: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    pub fn new(rd: R) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next PDU, or `None` on a clean end of stream between PDUs. A stream that ends inside
    /// a PDU is an `UnexpectedEof` I/O error; framing errors other than a bad data digest are
    /// returned as [`IscsiError::Pdu`] and leave the stream unusable.
    pub async fn next(
        &mut self,
        digests: Digests,
        max_data: usize,
    ) -> Result<Option<Frame>, IscsiError> {
        loop {
            match pdu::parse(&self.buf, digests, max_data) {
                Ok((p, used)) => {
                    self.buf.advance(used);
                    return Ok(Some(Frame::Pdu(p)));
                }
                Err(PduError::Incomplete { needed }) => {
                    self.buf.reserve(needed.saturating_sub(self.buf.len()));
                }
                Err(PduError::DataDigest { .. }) => {
                    let mut bhs = [0u8; pdu::BHS_LEN];
                    bhs.copy_from_slice(&self.buf[..pdu::BHS_LEN]);
                    let len = pdu::frame_len(&self.buf, digests).unwrap_or(self.buf.len());
                    self.buf.advance(len.min(self.buf.len()));
                    return Ok(Some(Frame::BadDataDigest(bhs)));
                }
                Err(e) => return Err(e.into()),
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// The first bytes of the unparsed buffer (for a Reject of an oversized PDU).
    pub fn pending_header(&self) -> Option<[u8; pdu::BHS_LEN]> {
        let mut bhs = [0u8; pdu::BHS_LEN];
        bhs.copy_from_slice(self.buf.get(..pdu::BHS_LEN)?);
        Some(bhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_split_reads_and_reports_truncation() {
        let mut p = Pdu::new(pdu::op::NOP_OUT);
        p.data = Bytes::from_static(b"hello");
        let mut wire = BytesMut::new();
        p.encode(&mut wire, Digests::default());
        p.encode(&mut wire, Digests::default());
        let truncated = &wire[..wire.len() - 3];
        let mut r = PduReader::new(truncated);
        assert!(matches!(
            r.next(Digests::default(), 8192).await,
            Ok(Some(Frame::Pdu(_)))
        ));
        assert!(matches!(
            r.next(Digests::default(), 8192).await,
            Err(IscsiError::Io(_))
        ));
        let mut r = PduReader::new(&wire[..]);
        assert!(matches!(
            r.next(Digests::default(), 4).await,
            Err(IscsiError::Pdu(_))
        ));
        assert!(r.pending_header().is_some());
    }
}
