//! MLLP framing: `<VT> message <FS><CR>` over a byte stream, with a size limit, a deadline for
//! each frame and a limit on idle time, so that a slow or broken peer cannot hold the edge.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Start of block.
pub const VT: u8 = 0x0b;
/// End of block, followed by [`CR`].
pub const FS: u8 = 0x1c;
/// Ends the frame after [`FS`].
pub const CR: u8 = 0x0d;

/// Limits on what a peer may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message accepted, in bytes.
    pub max_frame: usize,
    /// Longest a frame may take from its first byte to its last.
    pub frame_timeout: Duration,
    /// Longest the connection may sit idle between frames.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 1024 * 1024,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// What the reader found next on the stream.
#[derive(Debug)]
pub enum Frame {
    /// A whole message.
    Message(Vec<u8>),
    /// A message longer than the limit: its first `max_frame` bytes (enough for MSH), the rest
    /// read and thrown away.
    TooLarge {
        /// The first bytes, for the reply's MSH.
        head: Vec<u8>,
        /// How many bytes the frame held.
        total: usize,
    },
}

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the connection inside a frame.
    #[error("the peer closed the connection in the middle of a frame ({0} bytes read)")]
    HalfFrame(usize),
    /// Nothing arrived for the idle limit.
    #[error("no frame for {0:?}")]
    Idle(Duration),
    /// A frame took longer than its deadline.
    #[error("a frame took longer than {0:?}")]
    Slow(Duration),
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads frames from a stream, throwing away bytes outside frames (and counting them).
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    limits: Limits,
    /// Bytes seen outside any frame since the last call to [`FrameReader::take_stray`].
    stray: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `inner` within `limits`.
    pub fn new(inner: R, limits: Limits) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(8 * 1024),
            limits,
            stray: 0,
        }
    }

    /// Bytes thrown away outside frames since the last call.
    pub fn take_stray(&mut self) -> usize {
        std::mem::take(&mut self.stray)
    }

    /// The next frame.
    pub async fn next(&mut self) -> Result<Frame, ReadError> {
        // Skip to the start of a frame, within the idle limit.
        let idle_until = Instant::now() + self.limits.idle_timeout;
        loop {
            if let Some(start) = self.buf.iter().position(|b| *b == VT) {
                self.stray += start;
                self.buf.drain(..=start);
                break;
            }
            self.stray += self.buf.len();
            self.buf.clear();
            match tokio::time::timeout_at(idle_until, self.fill()).await {
                Err(_) => return Err(ReadError::Idle(self.limits.idle_timeout)),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        let deadline = Instant::now() + self.limits.frame_timeout;
        let mut body: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            // The end is FS CR; an FS at the very end of the buffer waits for the next read.
            let end = self.buf.windows(2).position(|w| w[0] == FS && w[1] == CR);
            let take = end.unwrap_or_else(|| {
                let keep = usize::from(self.buf.last() == Some(&FS));
                self.buf.len() - keep
            });
            total += take;
            let room = self.limits.max_frame.saturating_sub(body.len());
            body.extend_from_slice(&self.buf[..take.min(room)]);
            if let Some(end) = end {
                self.buf.drain(..end + 2);
                return Ok(if total > self.limits.max_frame {
                    Frame::TooLarge { head: body, total }
                } else {
                    Frame::Message(body)
                });
            }
            self.buf.drain(..take);
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(ReadError::Slow(self.limits.frame_timeout)),
                Ok(Ok(0)) => return Err(ReadError::HalfFrame(total)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.inner.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

/// Writes one message in an MLLP frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(VT);
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[FS, CR]);
    out.write_all(&framed).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn limits(max_frame: usize) -> Limits {
        Limits {
            max_frame,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_stray_bytes_are_counted() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, limits(1024));
        tokio::spawn(async move {
            tx.write_all(b"junk\x0bMSH|one\x1c").await.unwrap();
            tx.write_all(b"\x0d\r\n\x0bMSH|t\x1cwo\x1c\x0d")
                .await
                .unwrap();
        });
        match reader.next().await.unwrap() {
            Frame::Message(m) => assert_eq!(m, b"MSH|one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.take_stray(), 4);
        match reader.next().await.unwrap() {
            // A lone FS inside a message is content, not an end.
            Frame::Message(m) => assert_eq!(m, b"MSH|t\x1cwo"),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.take_stray(), 2);
        assert!(matches!(reader.next().await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn an_oversized_frame_is_read_through_and_reported_with_its_head() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx, limits(10));
        tokio::spawn(async move {
            let mut big = vec![VT];
            big.extend(std::iter::repeat_n(b'x', 5000));
            big.extend([FS, CR, VT, b'o', b'k', FS, CR]);
            tx.write_all(&big).await.unwrap();
        });
        match reader.next().await.unwrap() {
            Frame::TooLarge { head, total } => assert_eq!((head.len(), total), (10, 5000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(reader.next().await.unwrap(), Frame::Message(m) if m == b"ok"));
    }

    #[tokio::test]
    async fn a_half_frame_and_a_slow_sender_end_the_connection() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, limits(1024));
        tx.write_all(b"\x0bMSH|half").await.unwrap();
        drop(tx);
        assert!(matches!(reader.next().await, Err(ReadError::HalfFrame(8))));

        // Short real limits: the reader's own deadlines are what is under test.
        let quick = Limits {
            max_frame: 1024,
            frame_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(50),
        };
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, quick);
        tx.write_all(b"\x0bMSH|slo").await.unwrap();
        assert!(matches!(reader.next().await, Err(ReadError::Slow(_))));
        let (_tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, quick);
        assert!(matches!(reader.next().await, Err(ReadError::Idle(_))));
    }
}
