//! The transport seam: any ordered byte stream (`AsyncRead + AsyncWrite`) carries XTMP
//! frames. TCP and WebSocket ([`crate::ws::WsStream`] adapts binary messages into such a
//! stream, see [`crate::ServerHandle::serve_stream`]) are wired in; UDP feeds whole
//! datagrams to the same core entry points.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use xtmp_proto::control::ErrorPayload;
use xtmp_proto::{
    deframe, EncryptionType, ErrorCode, Header, MessageType, XTMPError, XTMPFlags, HEADER_LEN,
};

/// An ordered, reliable byte stream XTMP can run over (TCP, a WebSocket adapter, a
/// TLS-wrapped stream, an in-memory duplex in tests).
pub trait StreamTransport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> StreamTransport for T {}

/// Initial read buffer; grows only to the size of a validated frame header's frame.
const INITIAL_READ_BUF: usize = 4096;
/// Read size while the peer keeps the buffer full (a stream of frames): many small frames
/// per system call instead of a few.
const BUSY_READ_BUF: usize = 64 * 1024;
/// At most this much is read and discarded while lingering on close.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Why reading the next frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer stalled mid-frame past the read timeout.
    Timeout,
    /// The connection ended inside a frame, or another I/O error.
    Io(std::io::Error),
    /// The header is invalid (the stream cannot be resynchronised).
    Frame(XTMPError),
}

/// Cuts whole frames out of a byte stream. The header is validated as soon as its 96 bytes
/// are in, so memory is only reserved for frames whose length passed the cap.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_payload: u32,
    /// When the current (incomplete) frame must be complete: `read_timeout` after its first
    /// byte arrived, or after the reader came back for it (set only once a read has to
    /// wait, so frames already buffered cost no clock read).
    frame_deadline: Option<Instant>,
    /// The last read filled all the room it had: more is probably waiting, read bigger.
    busy: bool,
    /// Bytes read so far (for counters).
    pub(crate) bytes_read: u64,
    /// Free the read buffer after this long without data between frames.
    idle_release: Option<Duration>,
    /// The buffer was freed: the next read goes into a 64-byte allocation (what
    /// `BytesMut` reserves when full) instead of a fresh `INITIAL_READ_BUF`.
    released: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, max_payload: u32) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(INITIAL_READ_BUF),
            max_payload,
            frame_deadline: None,
            busy: false,
            bytes_read: 0,
            idle_release: None,
            released: false,
        }
    }

    /// Frees the read buffer when no byte arrives for `after` between frames, so an idle
    /// connection holds 64 bytes instead of `INITIAL_READ_BUF` (a server with many idle
    /// sessions). Costs one timer per read that starts with an empty buffer, and one extra
    /// read when data comes again.
    pub(crate) fn release_when_idle(mut self, after: Duration) -> Self {
        self.idle_release = Some(after);
        self
    }

    /// The next whole frame; `Ok(None)` at a clean end of stream (between frames).
    /// A started frame must be complete within `read_timeout` of its first byte.
    /// Cancel-safe: buffered bytes stay in the reader.
    pub(crate) async fn next_frame(
        &mut self,
        read_timeout: Duration,
        bytes_counter: &(dyn Fn(u64) + Sync),
    ) -> Result<Option<BytesMut>, ReadError> {
        loop {
            match deframe::frame_len(&self.buf, self.max_payload) {
                Ok(Some(n)) => {
                    let frame = self.buf.split_to(n);
                    self.frame_deadline = None;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Frame(e)),
            }
            // Reserve room: the whole frame once the (validated) header is in.
            let want = if self.buf.len() >= HEADER_LEN {
                match Header::parse(&self.buf, self.max_payload) {
                    Ok(h) => h.frame_len().saturating_sub(self.buf.len()),
                    Err(e) => return Err(ReadError::Frame(e)),
                }
            } else {
                INITIAL_READ_BUF
            };
            // Between frames (a started frame has or gets a deadline below).
            let idle = self.buf.is_empty();
            if idle && !self.busy && self.buf.capacity() > 4 * INITIAL_READ_BUF {
                // Quiet again after a burst or a large frame: do not keep its buffer.
                self.buf = BytesMut::with_capacity(INITIAL_READ_BUF);
            }
            let want = if self.busy {
                want.max(BUSY_READ_BUF)
            } else {
                want
            };
            if !(idle && self.released) && self.buf.capacity() - self.buf.len() < want.min(1 << 20)
            {
                self.buf.reserve(want.clamp(1, 1 << 20));
            }
            let room = self.buf.capacity() - self.buf.len();
            if self.frame_deadline.is_none() && !idle {
                self.frame_deadline = Some(Instant::now() + read_timeout);
            }
            let n = match (self.frame_deadline, self.idle_release) {
                (None, Some(after)) if idle && !self.released => {
                    // `read_buf` is cancel-safe: nothing is lost when the timer wins.
                    match tokio::time::timeout(after, self.inner.read_buf(&mut self.buf)).await {
                        Ok(r) => r.map_err(ReadError::Io)?,
                        Err(_) => {
                            self.buf = BytesMut::new();
                            self.released = true;
                            continue;
                        }
                    }
                }
                (None, _) => self
                    .inner
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(ReadError::Io)?,
                (Some(deadline), _) => {
                    match tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buf))
                        .await
                    {
                        Ok(r) => r.map_err(ReadError::Io)?,
                        Err(_) => return Err(ReadError::Timeout),
                    }
                }
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.released = false;
            self.busy = room > 0 && n >= room;
            self.bytes_read += n as u64;
            bytes_counter(n as u64);
        }
    }

    /// Reads and discards until end of stream, `max_wait`, or a byte cap: closing this way
    /// (after our final frames and a write shutdown) avoids a TCP reset that could destroy
    /// those frames in the peer's receive buffer.
    pub(crate) async fn linger(&mut self, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        let mut total = 0usize;
        // Discarded bytes go through the (heap) read buffer: a stack array here would sit
        // in every connection task's future for the connection's whole life.
        self.buf.clear();
        while total < LINGER_MAX_BYTES {
            if self.buf.capacity() < 4096 {
                self.buf.reserve(4096);
            }
            match tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    total += n;
                    self.buf.clear();
                }
                _ => return,
            }
        }
    }
}

/// A plain (pre-session) `Error` frame: encryption `None`, zero key id, nonce and tag,
/// sequence number 0, session id 0.
pub fn plain_error_frame(code: ErrorCode, reason: &str) -> Vec<u8> {
    let payload = ErrorPayload {
        code,
        request_seq: 0,
        reason: reason.to_string(),
    }
    .encode();
    let header = Header {
        message_type: MessageType::Error,
        flags: XTMPFlags::empty(),
        session_id: 0,
        sequence_number: 0,
        payload_length: payload.len() as u32,
        checksum: xtmp_proto::crc32(&payload),
        encryption_type: EncryptionType::None,
        key_id: [0; 16],
        nonce: [0; 24],
        auth_tag: [0; 16],
    };
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&header.to_bytes());
    f.extend_from_slice(&payload);
    f
}

/// If `frame` is a plain `Error` frame (session 0, no protection), its payload.
pub fn parse_plain_error(frame: &[u8]) -> Option<ErrorPayload> {
    let (h, payload) = xtmp_proto::parse_frame(frame, 64 * 1024).ok()?;
    if h.message_type != MessageType::Error
        || h.encryption_type != EncryptionType::None
        || h.session_id != 0
    {
        return None;
    }
    ErrorPayload::decode(payload).ok()
}

/// Writes and flushes `data` within `timeout` (the flush matters for buffering
/// transports such as TLS and the WebSocket adapter; on TCP it does nothing).
pub(crate) async fn write_all_timeout<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let write = async {
        w.write_all(data).await?;
        w.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Flushes and shuts down the write half within `timeout` (errors ignored: the peer may be gone).
pub(crate) async fn shutdown_timeout<W: AsyncWrite + Unpin>(w: &mut W, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let _ = w.flush().await;
        let _ = w.shutdown().await;
    })
    .await;
}

/// Listen backlog for the TCP and WebSocket listeners. `TcpListener::bind` uses 128,
/// which overflows (SYNs dropped, 1 s client retries) when hundreds of clients connect at
/// once; the kernel still caps it at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR` on Unix, as
/// `TcpListener::bind` sets it).
pub(crate) fn listen_tcp(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn frames_across_chunks_and_errors() {
        let e = plain_error_frame(ErrorCode::SERVER_BUSY, "busy");
        assert_eq!(parse_plain_error(&e).unwrap().code, ErrorCode::SERVER_BUSY);
        let mut two = e.clone();
        two.extend_from_slice(&e);
        let (mut a, b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            for chunk in two.chunks(5) {
                a.write_all(chunk).await.unwrap();
            }
        });
        let mut fr = FrameReader::new(b, 1024);
        let t = Duration::from_secs(5);
        assert_eq!(
            &fr.next_frame(t, &|_| {}).await.unwrap().unwrap()[..],
            &e[..]
        );
        assert_eq!(
            &fr.next_frame(t, &|_| {}).await.unwrap().unwrap()[..],
            &e[..]
        );
        writer.await.unwrap();
        assert!(fr.next_frame(t, &|_| {}).await.unwrap().is_none());

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut fr = FrameReader::new(b, 1024);
        assert!(matches!(
            fr.next_frame(t, &|_| {}).await,
            Err(ReadError::Frame(XTMPError::BadMagic))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_reader_frees_its_buffer_and_still_reads_whole_frames() {
        let e = plain_error_frame(ErrorCode::SERVER_BUSY, "busy");
        let (mut a, b) = tokio::io::duplex(4096);
        let mut fr = FrameReader::new(b, 1024).release_when_idle(Duration::from_secs(2));
        let t = Duration::from_secs(5);
        a.write_all(&e).await.unwrap();
        assert_eq!(
            &fr.next_frame(t, &|_| {}).await.unwrap().unwrap()[..],
            &e[..]
        );
        assert!(fr.buf.capacity() >= INITIAL_READ_BUF - e.len());
        // Nothing arrives for 3 s: the buffer is given back while the read stays pending
        // (on a 64-byte allocation, what `BytesMut` reserves when read into while full).
        let pending = tokio::time::timeout(Duration::from_secs(3), fr.next_frame(t, &|_| {})).await;
        assert!(pending.is_err());
        assert!(fr.released);
        assert!(fr.buf.capacity() <= 64, "{}", fr.buf.capacity());
        // Data again, in two pieces: the frame still comes out whole and exactly once.
        let mut two = e.clone();
        two.extend_from_slice(&e);
        let writer = tokio::spawn(async move {
            a.write_all(&two[..10]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            a.write_all(&two[10..]).await.unwrap();
            a
        });
        assert_eq!(
            &fr.next_frame(t, &|_| {}).await.unwrap().unwrap()[..],
            &e[..]
        );
        assert!(!fr.released);
        assert_eq!(
            &fr.next_frame(t, &|_| {}).await.unwrap().unwrap()[..],
            &e[..]
        );
        drop(writer.await.unwrap());
        assert!(fr.next_frame(t, &|_| {}).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_frame_times_out() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"XTMP\x01").await.unwrap();
        let mut fr = FrameReader::new(b, 1024);
        let r = fr.next_frame(Duration::from_millis(100), &|_| {}).await;
        assert!(matches!(r, Err(ReadError::Timeout)));
        drop(a);
    }
}
