//! Frame boundaries in a byte stream (TCP, WebSocket fallback streams).
//!
//! The header is validated as soon as its 96 bytes are buffered, so an oversized or
//! garbage header is rejected before the payload is waited for or any memory is reserved
//! for it.

use crate::error::XTMPError;
use crate::header::{Header, HEADER_LEN};

/// Length of the first frame in `buf`: `Ok(None)` while more bytes are needed,
/// `Ok(Some(n))` when `buf[..n]` is a whole frame (header checks passed; the CRC and
/// everything after are checked when the frame is opened).
///
/// # Errors
/// The header's validation error (see [`Header::parse`]).
pub fn frame_len(buf: &[u8], max_payload: u32) -> Result<Option<usize>, XTMPError> {
    if buf.len() < HEADER_LEN {
        // Reject garbage early: the magic is known from the first byte on.
        let n = buf.len().min(4);
        if buf[..n] != crate::header::MAGIC[..n] {
            return Err(XTMPError::BadMagic);
        }
        return Ok(None);
    }
    let h = Header::parse(buf, max_payload)?;
    let total = h.frame_len();
    Ok((buf.len() >= total).then_some(total))
}

/// A simple owning deframer: push bytes in, take whole frames out.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    max_payload: u32,
    failed: Option<XTMPError>,
}

impl Deframer {
    /// A deframer that refuses payloads over `max_payload`.
    pub fn new(max_payload: u32) -> Self {
        Self {
            buf: Vec::new(),
            max_payload,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, if buffered. After an error the stream is unusable and the
    /// same error is returned forever (the byte boundary is lost).
    ///
    /// # Errors
    /// The header's validation error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, XTMPError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match frame_len(&self.buf, self.max_payload) {
            Ok(Some(n)) => {
                let rest = self.buf.split_off(n);
                Ok(Some(core::mem::replace(&mut self.buf, rest)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }
}
