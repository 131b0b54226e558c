//! Checks the gRPC framing of each request body as it streams in (a flag byte, a four-byte length,
//! then that many bytes), so that garbage in place of a message, or a body cut short, is the
//! caller's INVALID_ARGUMENT; tonic itself answers those INTERNAL, as if the broker had failed.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tower::{Layer, Service};

/// A gRPC message's prefix: the compressed flag and the big-endian length.
const PREFIX: usize = 5;

/// Wraps every request body in a [`Checked`] one.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Framing(inner)
    }
}

/// The service [`FramingLayer`] makes.
#[derive(Debug, Clone)]
pub struct Framing<S>(S);

impl<S> Service<http::Request<Body>> for Framing<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.0
            .call(request.map(|body| Body::new(Checked::new(body))))
    }
}

/// Where the parser is in the stream of length-prefixed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `have` bytes of a prefix read so far.
    Prefix { bytes: [u8; PREFIX], have: usize },
    /// This many bytes of the current message still to come.
    Message(u32),
}

/// Scans the bytes of a request body for well-formed gRPC framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer(Position);

impl Default for Framer {
    fn default() -> Self {
        Self(Position::Prefix {
            bytes: [0; PREFIX],
            have: 0,
        })
    }
}

impl Framer {
    /// Takes the next bytes of the body; an error names what is wrong with the framing.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() {
            match &mut self.0 {
                Position::Message(left) => {
                    let n = data.len().min(*left as usize);
                    data = &data[n..];
                    *left -= n as u32;
                    if *left == 0 {
                        *self = Self::default();
                    }
                }
                Position::Prefix { bytes, have } => {
                    let n = data.len().min(PREFIX - *have);
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == PREFIX {
                        // The broker accepts no compression, so every message must say so.
                        if bytes[0] != 0 {
                            return Err("malformed message: bad gRPC message prefix");
                        }
                        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                        self.0 = if len == 0 {
                            Self::default().0
                        } else {
                            Position::Message(len)
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the body may end here: between messages, not inside one.
    pub fn at_boundary(&self) -> bool {
        matches!(self.0, Position::Prefix { have: 0, .. })
    }
}

/// A request body whose framing is checked as it is read; the first fault ends it with
/// INVALID_ARGUMENT, which tonic hands to the caller as the call's status.
#[derive(Debug)]
pub struct Checked {
    inner: Body,
    framer: Framer,
    failed: bool,
}

impl Checked {
    fn new(inner: Body) -> Self {
        Self {
            inner,
            framer: Framer::default(),
            failed: false,
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.failed = true;
        tracing::debug!(reason = why, "request body is not well-framed gRPC");
        Poll::Ready(Some(Err(Status::invalid_argument(why))))
    }
}

impl HttpBody for Checked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(why) = self.framer.feed(data) {
                        return self.fail(why);
                    }
                } else if !self.framer.at_boundary() {
                    // Trailers end the body too.
                    return self.fail("malformed message: the body ends inside a message");
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if !self.framer.at_boundary() => {
                self.fail("malformed message: the body ends inside a message")
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn whole_messages_in_any_split_end_on_a_boundary() {
        let mut stream = framed(b"hello");
        stream.extend(framed(b""));
        stream.extend(framed(&[7; 300]));
        for split in 0..stream.len() {
            let mut f = Framer::default();
            f.feed(&stream[..split]).unwrap();
            f.feed(&stream[split..]).unwrap();
            assert!(f.at_boundary(), "split at {split}");
        }
    }

    #[test]
    fn a_cut_short_message_or_prefix_is_not_a_boundary() {
        let stream = framed(b"hello");
        for cut in 1..stream.len() {
            let mut f = Framer::default();
            f.feed(&stream[..cut]).unwrap();
            assert!(!f.at_boundary(), "cut at {cut}");
        }
    }

    #[test]
    fn a_compressed_or_unknown_flag_is_refused() {
        for flag in [1u8, 2, 0x7f, 0xff] {
            let mut f = Framer::default();
            assert!(f.feed(&[flag, 0, 0, 0, 1, 0]).is_err(), "flag {flag}");
        }
    }
}
