//! The peers' wire format: the same length-prefixed framing over plain TCP, TLS and QUIC
//! streams (`u32` big-endian length of `op ‖ payload`, then `op`, then the payload), and
//! `op ‖ payload` datagrams over plain UDP. The peer servers answer exactly what the XTMP
//! server answers in each scenario (echo, sink, push stream, ML-DSA wallet auth).

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted (16 MiB plus the op byte), like XTMP's default `max_payload`.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 1;

/// Operation codes.
pub mod op {
    /// Echo the payload back (as `ECHO_REPLY`).
    pub const ECHO: u8 = 1;
    /// The echo.
    pub const ECHO_REPLY: u8 = 2;
    /// One-way message: counted and discarded.
    pub const SINK: u8 = 3;
    /// Answered with `SYNC_REPLY` (u64 messages, u64 bytes sunk so far) once every
    /// earlier frame was read.
    pub const SYNC: u8 = 4;
    /// The answer to `SYNC`.
    pub const SYNC_REPLY: u8 = 5;
    /// Start a push stream (see [`super::stream_params`]).
    pub const STREAM: u8 = 6;
    /// A pushed message: u64 send time (Unix ns), u64 sequence number, padding.
    pub const PUSH: u8 = 7;
    /// Register the wallet's ML-DSA-65 public key.
    pub const AUTH_REGISTER: u8 = 8;
    /// Success.
    pub const OK: u8 = 9;
    /// Ask for a challenge; answered with `CHALLENGE` (u64 session id, 32-byte challenge).
    pub const AUTH_CHALLENGE: u8 = 10;
    /// The challenge.
    pub const CHALLENGE: u8 = 11;
    /// The ML-DSA-65 signature over `xtmp_services::crypto::message::wallet_auth`.
    pub const AUTH_ANSWER: u8 = 12;
    /// Failure (the payload is a reason).
    pub const ERR: u8 = 13;
    /// Plain UDP only: stop the push stream to this address.
    pub const STOP: u8 = 14;
}

/// Push-stream mode byte: frames on the same stream.
pub const MODE_STREAM: u8 = 0;
/// Push-stream mode byte: QUIC datagrams, the producer waiting for room in the send buffer
/// (`send_datagram_wait`: backpressure, as XTMP's live-updates route).
pub const MODE_DATAGRAM: u8 = 1;
/// Push-stream mode byte: QUIC datagrams, the producer never waiting (`send_datagram`:
/// quinn drops the oldest queued datagram when its send buffer is full — the drop-oldest
/// semantics of XTMP's metrics-stream route).
pub const MODE_DATAGRAM_DROP_OLDEST: u8 = 2;

/// A pushed message body of `size` bytes (at least 16): send time, sequence, zero padding.
pub fn push_body(size: usize, seq: u64) -> Vec<u8> {
    let mut b = vec![0u8; size.max(16)];
    b[..8].copy_from_slice(&crate::stats::unix_ns().to_be_bytes());
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Reads the (send time, sequence) of a pushed body.
pub fn parse_push(body: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    Some((ts, seq))
}

/// The parameters of `op::STREAM` (also the XTMP subscribe payload): message size, mode,
/// count (0 = until the connection closes), rate in messages/s (0 = as fast as possible).
pub fn stream_params(size: u32, mode: u8, count: u64, rate: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(17);
    p.extend_from_slice(&size.to_be_bytes());
    p.push(mode);
    p.extend_from_slice(&count.to_be_bytes());
    p.extend_from_slice(&rate.to_be_bytes());
    p
}

/// Decodes `op::STREAM` parameters.
pub fn parse_stream_params(p: &[u8]) -> Option<(u32, u8, u64, u32)> {
    let size = u32::from_be_bytes(p.get(..4)?.try_into().ok()?);
    let mode = *p.get(4)?;
    let count = u64::from_be_bytes(p.get(5..13)?.try_into().ok()?);
    let rate = u32::from_be_bytes(p.get(13..17)?.try_into().ok()?);
    Some((size, mode, count, rate))
}

/// A framed connection over any ordered byte stream.
pub struct FrameConn<S> {
    io: S,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FrameConn<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Self {
            io,
            // Like the XTMP runtime's reader: 4 KiB to start, grown to the frame size.
            rbuf: BytesMut::with_capacity(4096),
            wbuf: Vec::new(),
        }
    }

    /// Appends a frame to the write buffer (sent by [`FrameConn::flush`]).
    pub fn queue(&mut self, op: u8, payload: &[u8]) {
        let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
        self.wbuf.extend_from_slice(&len.to_be_bytes());
        self.wbuf.push(op);
        self.wbuf.extend_from_slice(payload);
    }

    /// Bytes waiting in the write buffer.
    pub fn queued(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes the buffered frames.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Queues and writes one frame.
    pub async fn send(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        self.queue(op, payload);
        self.flush().await
    }

    /// The next frame (`None` at a clean end of stream).
    pub async fn recv(&mut self) -> Result<Option<(u8, BytesMut)>> {
        loop {
            if self.rbuf.len() >= 4 {
                let len =
                    u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]])
                        as usize;
                if len == 0 || len > MAX_FRAME {
                    bail!("bad frame length {len}");
                }
                if self.rbuf.len() >= 4 + len {
                    self.rbuf.advance(4);
                    let mut f = self.rbuf.split_to(len);
                    let op = f[0];
                    f.advance(1);
                    return Ok(Some((op, f)));
                }
                self.rbuf.reserve(4 + len - self.rbuf.len());
            } else if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            let n = self.io.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                if self.rbuf.is_empty() {
                    return Ok(None);
                }
                bail!("connection ended inside a frame");
            }
        }
    }

    /// The next frame, which must have op `want`.
    pub async fn expect(&mut self, want: u8) -> Result<BytesMut> {
        match self.recv().await? {
            Some((o, p)) if o == want => Ok(p),
            Some((op::ERR, p)) => bail!("peer error: {}", String::from_utf8_lossy(&p)),
            Some((o, _)) => bail!("unexpected op {o} (wanted {want})"),
            None => bail!("connection closed (wanted op {want})"),
        }
    }

    /// Sends a request frame and waits for the answer with op `want`.
    pub async fn call(&mut self, op: u8, payload: &[u8], want: u8) -> Result<BytesMut> {
        self.send(op, payload).await?;
        self.expect(want).await.context("no answer")
    }

    /// Shuts the write side down (best effort).
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}
