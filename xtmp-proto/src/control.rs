//! Payload layouts of the control messages handled by the core and of the small
//! messages every runtime exchanges (`PROTOCOL.md` §7).

use crate::error::{ErrorCode, XTMPError};
use crate::header::MessageType;

/// Longest reason string carried by `Error` and `Disconnect` (bytes of UTF-8).
pub const MAX_REASON_LEN: usize = 1024;

fn take_u16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}
fn take_u64(p: &[u8], at: usize) -> Option<u64> {
    let s = p.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `Error` (0xFE): code (2) ‖ request sequence number (8; 0 when not about a request) ‖
/// reason length (2) ‖ reason (UTF-8, at most 1024 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPayload {
    /// What went wrong.
    pub code: ErrorCode,
    /// Sequence number of the offending message, or 0.
    pub request_seq: u64,
    /// Short human-readable reason (never key material or decryption details).
    pub reason: String,
}

impl ErrorPayload {
    /// Encodes (the reason is cut at 1024 bytes on a character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let r = truncate_utf8(&self.reason, MAX_REASON_LEN);
        let mut v = Vec::with_capacity(12 + r.len());
        v.extend_from_slice(&self.code.0.to_be_bytes());
        v.extend_from_slice(&self.request_seq.to_be_bytes());
        v.extend_from_slice(&(r.len() as u16).to_be_bytes());
        v.extend_from_slice(r.as_bytes());
        v
    }

    /// Decodes; exact length, reason at most 1024 bytes (invalid UTF-8 is replaced).
    ///
    /// # Errors
    /// [`XTMPError::MalformedPayload`].
    pub fn decode(p: &[u8]) -> Result<Self, XTMPError> {
        let bad = || XTMPError::MalformedPayload(MessageType::Error);
        let code = take_u16(p, 0).ok_or_else(bad)?;
        let request_seq = take_u64(p, 2).ok_or_else(bad)?;
        let len = take_u16(p, 10).ok_or_else(bad)? as usize;
        if len > MAX_REASON_LEN || p.len() != 12 + len {
            return Err(bad());
        }
        Ok(Self {
            code: ErrorCode(code),
            request_seq,
            reason: String::from_utf8_lossy(&p[12..]).into_owned(),
        })
    }
}

/// `Disconnect` (0x04): code (2) ‖ reason length (2) ‖ reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectPayload {
    /// Why (`NO_ERROR` for a normal close).
    pub code: ErrorCode,
    /// Short reason.
    pub reason: String,
}

impl DisconnectPayload {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let r = truncate_utf8(&self.reason, MAX_REASON_LEN);
        let mut v = Vec::with_capacity(4 + r.len());
        v.extend_from_slice(&self.code.0.to_be_bytes());
        v.extend_from_slice(&(r.len() as u16).to_be_bytes());
        v.extend_from_slice(r.as_bytes());
        v
    }
    /// Decodes.
    ///
    /// # Errors
    /// [`XTMPError::MalformedPayload`].
    pub fn decode(p: &[u8]) -> Result<Self, XTMPError> {
        let bad = || XTMPError::MalformedPayload(MessageType::Disconnect);
        let code = take_u16(p, 0).ok_or_else(bad)?;
        let len = take_u16(p, 2).ok_or_else(bad)? as usize;
        if len > MAX_REASON_LEN || p.len() != 4 + len {
            return Err(bad());
        }
        Ok(Self {
            code: ErrorCode(code),
            reason: String::from_utf8_lossy(&p[4..]).into_owned(),
        })
    }
}

/// `Ack` (0x05): the acknowledged sequence number (8 bytes).
pub fn encode_ack(acked_seq: u64) -> [u8; 8] {
    acked_seq.to_be_bytes()
}

/// Decodes an `Ack` payload.
///
/// # Errors
/// [`XTMPError::MalformedPayload`] unless exactly 8 bytes.
pub fn decode_ack(p: &[u8]) -> Result<u64, XTMPError> {
    if p.len() != 8 {
        return Err(XTMPError::MalformedPayload(MessageType::Ack));
    }
    take_u64(p, 0).ok_or(XTMPError::MalformedPayload(MessageType::Ack))
}

/// Splits a `Response`/`QLOCKResponse`/`TLSLSResponse` payload into the request's
/// sequence number and the body.
///
/// # Errors
/// [`XTMPError::MalformedPayload`] when shorter than 8 bytes.
pub fn split_response(t: MessageType, p: &[u8]) -> Result<(u64, &[u8]), XTMPError> {
    let seq = take_u64(p, 0).ok_or(XTMPError::MalformedPayload(t))?;
    Ok((seq, &p[8..]))
}

/// The response type for a request type: `QLOCKResponse` for `QLOCKRequest`,
/// `TLSLSResponse` for `TLSLSRequest`, `Response` for everything else.
pub fn response_type_for(request: MessageType) -> MessageType {
    match request {
        MessageType::QLOCKRequest => MessageType::QLOCKResponse,
        MessageType::TLSLSRequest => MessageType::TLSLSResponse,
        _ => MessageType::Response,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn error_round_trip_and_rejects() {
        let e = ErrorPayload {
            code: ErrorCode::UNKNOWN_MESSAGE_TYPE,
            request_seq: 42,
            reason: "no handler for 0x77".into(),
        };
        assert_eq!(ErrorPayload::decode(&e.encode()).unwrap(), e);
        let mut enc = e.encode();
        enc.push(0);
        assert!(ErrorPayload::decode(&enc).is_err());
        assert!(ErrorPayload::decode(&enc[..5]).is_err());
        let long = ErrorPayload {
            reason: "é".repeat(2000),
            ..e
        };
        let d = ErrorPayload::decode(&long.encode()).unwrap();
        assert!(d.reason.len() <= MAX_REASON_LEN);
    }

    #[test]
    fn disconnect_and_ack() {
        let d = DisconnectPayload {
            code: ErrorCode::SHUTTING_DOWN,
            reason: "bye".into(),
        };
        assert_eq!(DisconnectPayload::decode(&d.encode()).unwrap(), d);
        assert!(DisconnectPayload::decode(&[0, 1, 0, 9, b'x']).is_err());
        assert_eq!(decode_ack(&encode_ack(7)).unwrap(), 7);
        assert!(decode_ack(&[1, 2, 3]).is_err());
        assert_eq!(
            response_type_for(MessageType::QLOCKRequest),
            MessageType::QLOCKResponse
        );
        assert_eq!(
            response_type_for(MessageType::WalletBalance),
            MessageType::Response
        );
    }
}
