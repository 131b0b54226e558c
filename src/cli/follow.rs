//! Event streams that survive a dropped connection, shared by the watch commands: reconnect on
//! their own with `after_sequence` = the last event seen (so nothing is missed or seen twice), say
//! so on stderr, and end cleanly on Ctrl-C.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

use super::Ctx;
use super::error::{CliError, Subject};
use crate::client::Client;

/// First pause before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One kind of event stream.
pub(crate) trait Feed: Send + Sync + 'static {
    /// The event.
    type Event: Send + 'static;
    /// Opens the stream of events after `after`.
    fn open(
        &self,
        client: Client,
        after: u64,
    ) -> impl Future<Output = Result<Streaming<Self::Event>, Status>> + Send;
    /// The event's sequence number.
    fn sequence(event: &Self::Event) -> u64;
}

/// Statuses that reconnecting cannot fix.
fn is_fatal(code: Code) -> bool {
    matches!(
        code,
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::Unimplemented
    )
}

/// Connects and opens the first stream, failing fast (a wrong address or token should be heard
/// at once), then follows it in a task that reconnects by itself. Events, and a fatal error if one
/// comes, arrive on the returned channel.
pub(crate) async fn start<F: Feed>(
    ctx: &Ctx,
    feed: F,
    after: u64,
) -> Result<mpsc::Receiver<Result<F::Event, CliError>>, CliError> {
    let client = ctx.connect_streaming().await?;
    let stream = feed
        .open(client, after)
        .await
        .map_err(|s| ctx.status(&s, Subject::Other))?;
    let (tx, rx) = mpsc::channel(64);
    let ctx = Ctx {
        settings: ctx.settings.clone(),
        out: ctx.out.clone(),
    };
    tokio::spawn(pump(ctx, feed, stream, after, tx));
    Ok(rx)
}

async fn pump<F: Feed>(
    ctx: Ctx,
    feed: F,
    mut stream: Streaming<F::Event>,
    mut after: u64,
    tx: mpsc::Sender<Result<F::Event, CliError>>,
) {
    let addr = ctx.settings.addr.value.clone();
    loop {
        let lost = match stream.message().await {
            Ok(Some(event)) => {
                let sequence = F::sequence(&event);
                if sequence <= after {
                    continue; // already seen before a reconnect
                }
                after = sequence;
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => "the broker closed the stream".to_string(),
            Err(status) if is_fatal(status.code()) => {
                let _ = tx.send(Err(ctx.status(&status, Subject::Other))).await;
                return;
            }
            Err(status) => status.message().to_string(),
        };
        eprintln!(
            "labctl: lost the connection to the broker at {addr} ({lost}); reconnecting, \
             resuming after event {after}"
        );
        let mut backoff = FIRST_BACKOFF;
        stream = loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let client = match ctx.connect_streaming().await {
                Ok(c) => c,
                Err(CliError::Unavailable(_)) => continue,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            match feed.open(client, after).await {
                Ok(s) => break s,
                Err(status) if is_fatal(status.code()) => {
                    let _ = tx.send(Err(ctx.status(&status, Subject::Other))).await;
                    return;
                }
                Err(_) => continue,
            }
        };
        eprintln!("labctl: reconnected to the broker at {addr}; resuming after event {after}");
    }
}

/// Resolves on Ctrl-C. The handler is installed when this is called, not when first polled, so
/// an interrupt that comes early still ends the watch cleanly.
pub(crate) fn interrupted() -> Result<impl Future<Output = ()>, CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigint = signal(SignalKind::interrupt())
            .map_err(|e| CliError::Other(format!("cannot listen for Ctrl-C: {e}")))?;
        Ok(async move {
            sigint.recv().await;
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
