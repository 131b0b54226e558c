//! Event streams: the retained backlog after a sequence number, then live events, none twice and
//! none missing, even for a watcher that falls behind the live channel.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::engine::EventLog;
use crate::routing::Event;

/// Messages buffered per watcher before the pump waits for the client.
const BUFFER: usize = 256;

/// Streams `log` after `after` through `render` until the client goes away or the broker stops;
/// `slot` (the organisation's watch quota) is held until then.
/// `guard` lives as long as the stream (its watch slot, and for a lab its presence).
pub(crate) fn pump<T: Send + 'static, G: Send + 'static>(
    log: Arc<EventLog>,
    after: u64,
    guard: G,
    mut shutdown: signal::Receiver<bool>,
    render: fn(&Event) -> Option<T>,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _guard = guard;
        let (backlog, mut live) = log.subscribe(after);
        let mut last = after;
        if !send_all(&tx, backlog, &mut last, render).await {
            return;
        }
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = stopped(&mut shutdown) => {
                    let _ = tx.send(Err(Status::unavailable(format!(
                        "the broker is shutting down; reconnect with after_sequence={last}"
                    )))).await;
                    return;
                }
                received = live.recv() => match received {
                    Ok(event) if event.sequence <= last => {}
                    Ok(event) => {
                        if !send_all(&tx, vec![event], &mut last, render).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live channel: catch up from the retained log.
                        if !send_all(&tx, log.since(last), &mut last, render).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn send_all<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    events: Vec<Event>,
    last: &mut u64,
    render: fn(&Event) -> Option<T>,
) -> bool {
    for event in events {
        *last = event.sequence;
        if let Some(message) = render(&event)
            && tx.send(Ok(message)).await.is_err()
        {
            return false;
        }
    }
    true
}

/// Resolves once the broker begins to shut down (or the signal's sender is gone).
async fn stopped(shutdown: &mut signal::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
