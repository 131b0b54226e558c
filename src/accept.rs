//! The gRPC listener's connections: at most `connections_per_peer` open from one IP address (more
//! are closed as they arrive), TLS handshakes in tasks of their own, and one deadline by which a
//! new connection must have finished its handshake and sent the HTTP/2 preface and its first
//! frame. A connection that sends nothing, or half a preface, is closed instead of held open.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// HTTP/2's client connection preface, which precedes the client's first frame.
const PREFACE_LEN: usize = 24;
/// An HTTP/2 frame header: a 24-bit payload length, type, flags and stream id.
const FRAME_HEADER_LEN: usize = 9;

/// How the listener treats new connections.
#[derive(Clone)]
pub(crate) struct AcceptOptions {
    /// Open connections allowed from one IP address.
    pub(crate) per_peer: usize,
    /// Time from accept to the end of the first frame (TLS handshake included).
    pub(crate) handshake_timeout: Duration,
    /// TCP keepalive for accepted connections.
    pub(crate) keepalive: Duration,
    /// TLS, when the listener serves it.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// What a call's request extensions hold about its connection: the peer's address and, over
/// mutual TLS, its verified certificate chain.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The client certificate chain, leaf first, if the peer presented one.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// Accepts connections on `listener` in a task of its own until every [`SharedIncoming`] made
/// from the result is gone; connections come out ready for HTTP/2 (TLS done, if any).
pub(crate) fn spawn(
    listener: TcpListener,
    options: AcceptOptions,
    metrics: Arc<Metrics>,
) -> Arc<Mutex<mpsc::Receiver<Conn>>> {
    let (tx, rx) = mpsc::channel(64);
    let peers = Peers::default();
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, typically: pause rather than spin.
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Some(slot) = peers.admit(remote.ip(), options.per_peer) else {
                tracing::warn!(
                    peer = %remote.ip(),
                    limit = options.per_peer,
                    "closing a gRPC connection: too many open from this address"
                );
                metrics
                    .grpc_connections_closed
                    .with_label_values(&["peer_limit"])
                    .inc();
                drop(tcp);
                continue;
            };
            tune(&tcp, options.keepalive);
            let deadline = Instant::now() + options.handshake_timeout;
            let (tx, tls, metrics) = (tx.clone(), options.tls.clone(), metrics.clone());
            tokio::spawn(async move {
                let (io, certs) = match tls {
                    None => (Io::Plain(tcp), None),
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let certs = stream.get_ref().1.peer_certificates().map(|c| {
                                    Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())
                                });
                                (Io::Tls(Box::new(stream)), certs)
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %remote, "TLS handshake timed out");
                                metrics
                                    .grpc_connections_closed
                                    .with_label_values(&["handshake_timeout"])
                                    .inc();
                                return;
                            }
                        }
                    }
                };
                let conn = Conn {
                    io,
                    first: FirstFrame::default(),
                    deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                    peer: PeerInfo { remote, certs },
                    metrics,
                    _slot: slot,
                };
                let _ = tx.send(conn).await;
            });
        }
    });
    Arc::new(Mutex::new(rx))
}

/// Sets the options tonic would set on a listener it bound itself.
fn tune(stream: &TcpStream, keepalive: Duration) {
    // Without TCP_NODELAY, Nagle's algorithm holds small gRPC answers back until the previous
    // segment is acknowledged: milliseconds of latency per call.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let options = socket2::TcpKeepalive::new().with_time(keepalive);
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&options) {
        tracing::debug!(error = %err, "cannot set TCP keepalive");
    }
}

/// Connections handed out from the accept task, to the starting (health-only) server and then
/// the full one. A channel wakes only the last task that polled it, so the starting server's
/// stream ends for good once `done` is set, before the full server begins to take connections.
#[derive(Debug)]
pub(crate) struct SharedIncoming {
    pub(crate) conns: Arc<Mutex<mpsc::Receiver<Conn>>>,
    pub(crate) done: Option<Arc<AtomicBool>>,
}

impl tokio_stream::Stream for SharedIncoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done.as_ref().is_some_and(|d| d.load(Ordering::SeqCst)) {
            return Poll::Ready(None);
        }
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// Open connections per IP address.
#[derive(Debug, Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Peers {
    /// A slot for one more connection from `ip`, or `None` when it has `limit` open already.
    fn admit(&self, ip: IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One open connection's place in its address's count, given back when the connection closes.
#[derive(Debug)]
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts the first bytes a client sends: the preface, then one whole frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FirstFrame {
    seen: usize,
    /// The first frame's header, once its bytes have arrived.
    header: [u8; FRAME_HEADER_LEN],
}

impl FirstFrame {
    /// Takes the next bytes read; true once the preface and the first frame are complete.
    fn feed(&mut self, data: &[u8]) -> bool {
        let start = self.seen;
        self.seen = self.seen.saturating_add(data.len());
        // Copy whatever part of the frame header these bytes cover.
        for (i, byte) in data.iter().enumerate() {
            let at = start + i;
            if at >= PREFACE_LEN + FRAME_HEADER_LEN {
                break;
            }
            if at >= PREFACE_LEN {
                self.header[at - PREFACE_LEN] = *byte;
            }
        }
        self.complete()
    }

    fn complete(&self) -> bool {
        if self.seen < PREFACE_LEN + FRAME_HEADER_LEN {
            return false;
        }
        let payload = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
        self.seen >= PREFACE_LEN + FRAME_HEADER_LEN + payload as usize
    }
}

#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: reads fail once the deadline passes before the preface and first
/// frame are in, which ends the connection; it holds its place in its address's count.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    first: FirstFrame,
    /// `None` once the first frame is in.
    deadline: Option<Pin<Box<Sleep>>>,
    peer: PeerInfo,
    metrics: Arc<Metrics>,
    _slot: PeerSlot,
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            tracing::debug!(peer = %this.peer.remote, "closing a gRPC connection: no HTTP/2 preface and first frame in time");
            this.metrics
                .grpc_connections_closed
                .with_label_values(&["handshake_timeout"])
                .inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface and first frame in time",
            )));
        }
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if this.deadline.is_some()
            && let Poll::Ready(Ok(())) = read
            && this.first.feed(&buf.filled()[before..])
        {
            this.deadline = None;
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// The preface and an empty SETTINGS frame, as a client opens.
    fn opening(payload: &[u8]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        let len = (payload.len() as u32).to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], 4, 0, 0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_first_frame_completes_only_with_its_whole_payload_in_any_split() {
        for payload in [&[][..], &[0, 3, 0, 0, 0, 100][..]] {
            let bytes = opening(payload);
            for split in 0..bytes.len() {
                let mut f = FirstFrame::default();
                assert!(!f.feed(&bytes[..split]), "split at {split}");
                assert!(f.feed(&bytes[split..]), "split at {split}");
            }
        }
    }

    #[test]
    fn half_a_preface_or_a_frame_header_alone_is_not_enough() {
        let bytes = opening(&[0, 3, 0, 0, 0, 100]);
        for cut in [
            0,
            12,
            PREFACE_LEN,
            PREFACE_LEN + FRAME_HEADER_LEN,
            bytes.len() - 1,
        ] {
            let mut f = FirstFrame::default();
            assert!(!f.feed(&bytes[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn a_peer_gets_its_limit_of_slots_and_one_more_once_one_is_given_back() {
        let peers = Peers::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..3).map(|_| peers.admit(ip, 3).unwrap()).collect();
        assert!(peers.admit(ip, 3).is_none());
        assert!(
            peers.admit(other, 3).is_some(),
            "other addresses are counted apart"
        );
        drop(slots.into_iter().next());
        assert!(peers.admit(ip, 3).is_some());
    }
}
