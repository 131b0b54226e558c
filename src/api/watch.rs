//! Event streams: the retained backlog after a sequence number, then live events, none twice and
//! none missing, even for a watcher that falls behind the live channel.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use tokio::sync::watch as signal;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Status;

use crate::engine::EventLog;
use crate::routing::Event;

/// Renders an event for a watcher: its message, or `None` for an event not meant for it.
type Render<T> = Box<dyn Fn(&Event) -> Option<T> + Send>;

/// Retained events a watcher copies from the log at a time.
const BACKLOG_PART: usize = 4096;

/// One watcher's stream, polled by the connection that serves it: events are rendered and
/// encoded where they are sent, with no task or channel of their own in between.
pub struct EventStream<T> {
    log: Arc<EventLog>,
    /// Retained events still to send: the backlog at first, then a catch-up after lagging.
    pending: std::vec::IntoIter<Event>,
    /// `pending` was a whole part: the retained log may hold more after it.
    more_retained: bool,
    live: BroadcastStream<Event>,
    /// The sequence number of the last event sent (or skipped as not for this watcher).
    last: u64,
    render: Render<T>,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    /// Held while the stream lives: the watch slot, and for a lab its presence.
    _guard: Box<dyn Any + Send>,
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("last", &self.last)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Streams `log` after `after` through `render` until the client goes away or the broker stops;
/// `guard` is held until then.
pub(crate) fn stream<T, G: Send + 'static>(
    log: Arc<EventLog>,
    after: u64,
    guard: G,
    mut shutdown: signal::Receiver<bool>,
    render: impl Fn(&Event) -> Option<T> + Send + 'static,
) -> EventStream<T> {
    // Subscribing takes the backlog and the live receiver at one instant, so nothing falls
    // between them.
    let (backlog, live) = log.subscribe(after, BACKLOG_PART);
    EventStream {
        log,
        more_retained: backlog.len() == BACKLOG_PART,
        pending: backlog.into_iter(),
        live: BroadcastStream::new(live),
        last: after,
        render: Box::new(render),
        stopping: Box::pin(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        }),
        done: false,
        _guard: Box::new(guard),
    }
}

impl<T> EventStream<T> {
    /// The next part of the retained log after the last event sent. Events published meanwhile
    /// are in the log too, and the live channel's copies of them are skipped as already sent.
    fn catch_up(&mut self) {
        let part = self.log.since(self.last, BACKLOG_PART);
        self.more_retained = part.len() == BACKLOG_PART;
        self.pending = part.into_iter();
    }

    /// The rendering of `event` if it is new to this watcher and meant for it.
    fn take(&mut self, event: &Event) -> Option<T> {
        if event.sequence <= self.last {
            return None;
        }
        self.last = event.sequence;
        (self.render)(event)
    }
}

impl<T> Stream for EventStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            while let Some(event) = this.pending.next() {
                if let Some(message) = this.take(&event) {
                    return Poll::Ready(Some(Ok(message)));
                }
            }
            if this.more_retained {
                this.catch_up();
                continue;
            }
            if this.stopping.as_mut().poll(cx).is_ready() {
                this.done = true;
                return Poll::Ready(Some(Err(Status::unavailable(format!(
                    "the broker is shutting down; reconnect with after_sequence={}",
                    this.last
                )))));
            }
            match ready!(Pin::new(&mut this.live).poll_next(cx)) {
                Some(Ok(event)) => {
                    if let Some(message) = this.take(&event) {
                        return Poll::Ready(Some(Ok(message)));
                    }
                }
                // Fell behind the live channel: catch up from the retained log.
                Some(Err(BroadcastStreamRecvError::Lagged(_))) => this.catch_up(),
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::config::Config;
    use crate::domain::{Priority, Timestamp};
    use crate::routing::{Outcome, fixtures};

    /// One real event for trust RJ1, from the demo directory's router.
    fn an_event() -> Event {
        let now = Timestamp::from_millis(1_750_000_000_000);
        let mut router = Config::demo()
            .unwrap()
            .directory()
            .router(std::sync::Arc::new(crate::routing::DefaultPolicy));
        let command = fixtures::submit(&router, "RJ1", 1, Priority::Urgent, now);
        let mut outcome = Outcome::default();
        router.apply(&command, now, &mut outcome).unwrap();
        outcome.events.remove(0)
    }

    /// Publishes copies of one real event under the sequence numbers it is given.
    fn publisher(log: &EventLog) -> impl Fn(u64) + '_ {
        let template = an_event();
        move |sequence| {
            let mut event = template.clone();
            event.sequence = sequence;
            log.publish_for_tests(event);
        }
    }

    fn poll_now<T>(stream: &mut EventStream<T>) -> Poll<Option<Result<T, Status>>> {
        Pin::new(stream).poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_watcher_that_lags_behind_the_live_channel_catches_up_with_nothing_missed_or_repeated() {
        let log = Arc::new(EventLog::empty());
        let publish = publisher(&log);
        for sequence in 1..=3 {
            publish(sequence);
        }
        let (_stopping, shutdown) = signal::channel(false);
        let mut stream = stream(log.clone(), 1, (), shutdown, |e: &Event| Some(e.sequence));
        // Far more than the live channel holds, before the watcher reads anything.
        let last = 3 + 3 * EventLog::LIVE_CAPACITY as u64;
        for sequence in 4..=last {
            publish(sequence);
        }
        let mut seen = Vec::new();
        while let Poll::Ready(Some(item)) = poll_now(&mut stream) {
            seen.push(item.unwrap());
        }
        assert_eq!(seen, (2..=last).collect::<Vec<u64>>());
        // Then live again: the next event arrives once.
        publish(last + 1);
        assert!(matches!(poll_now(&mut stream), Poll::Ready(Some(Ok(s))) if s == last + 1));
        assert!(poll_now(&mut stream).is_pending());
    }

    #[test]
    fn a_long_backlog_is_copied_a_part_at_a_time_with_nothing_missed_or_repeated() {
        let log = Arc::new(EventLog::empty());
        let publish = publisher(&log);
        let retained = 2 * BACKLOG_PART as u64 + 10;
        for sequence in 1..=retained {
            publish(sequence);
        }
        for after in [0, 5, BACKLOG_PART as u64, retained - 1] {
            let (_stopping, shutdown) = signal::channel(false);
            let mut stream = stream(log.clone(), after, (), shutdown, |e: &Event| {
                Some(e.sequence)
            });
            let mut seen = Vec::new();
            while let Poll::Ready(Some(item)) = poll_now(&mut stream) {
                assert!(stream.pending.len() < BACKLOG_PART, "a part at a time");
                seen.push(item.unwrap());
                // Published while the backlog is read: sent once, after it.
                if seen.len() == 3 {
                    publish(retained + 1 + after);
                }
            }
            // Every event the log holds after `after`, in order, each once: the backlog, the
            // one published while it was read, and those published in earlier rounds.
            let expected: Vec<u64> = log
                .since(after, usize::MAX)
                .iter()
                .map(|e| e.sequence)
                .collect();
            assert_eq!(seen, expected, "from {after}");
            assert_eq!(seen.last(), Some(&(retained + 1 + after)));
        }
    }

    #[test]
    fn shutdown_ends_the_stream_with_unavailable_naming_where_to_resume() {
        let log = Arc::new(EventLog::empty());
        let mut event = an_event();
        event.sequence = 1;
        log.publish_for_tests(event);
        let (stopping, shutdown) = signal::channel(false);
        let mut stream = stream(log, 0, (), shutdown, |e: &Event| Some(e.sequence));
        assert!(matches!(poll_now(&mut stream), Poll::Ready(Some(Ok(1)))));
        assert!(poll_now(&mut stream).is_pending());
        stopping.send_replace(true);
        match poll_now(&mut stream) {
            Poll::Ready(Some(Err(status))) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(status.message().contains("after_sequence=1"), "{status}");
            }
            other => panic!(
                "expected UNAVAILABLE, got {:?}",
                other.map(|o| o.map(|r| r.is_ok()))
            ),
        }
        assert!(matches!(poll_now(&mut stream), Poll::Ready(None)));
    }
}
