//! LabService's Work stream: a lab's events and the answers to its actions on one HTTP/2 stream,
//! for lab systems that take work all day, instead of a call per decision.

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::EventStream;
use crate::auth::Principal;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::ops::code_name;
use crate::proto;
use crate::proto::work_response::Item;

/// Actions of one stream running at once. The next is read only when one ends, so a lab that
/// sends faster than the broker answers is held back by HTTP/2 flow control, not queued here.
const ACTIONS_AT_ONCE: usize = 256;

/// Runs one action of a Work stream as its call would and answers it. The lab service is the one
/// actor; the stream only needs this, so it does not reach back into the service.
pub(super) trait Actor: Clone + Send + Sync + 'static {
    /// The answer to `action`, done as `who`.
    fn act(
        &self,
        who: &Principal,
        action: proto::WorkRequest,
    ) -> impl Future<Output = proto::WorkResult> + Send;
}

/// What a Work stream sends: the lab's events merged with its actions' answers.
pub type WorkStream = Pin<Box<dyn Stream<Item = Result<proto::WorkResponse, Status>> + Send>>;

/// Serves an opened Work stream: `events` as they come, and an answer for each action read from
/// `inbound`.
pub(super) fn serve(
    api: impl Actor,
    who: Principal,
    inbound: Streaming<proto::WorkRequest>,
    events: EventStream<proto::JobEvent>,
) -> WorkStream {
    let (answers, answered) = mpsc::channel(ACTIONS_AT_ONCE);
    tokio::spawn(read_actions(api, who, inbound, answers));
    let events = events.map(|event| {
        event.map(|event| proto::WorkResponse {
            item: Some(Item::Event(event)),
        })
    });
    Box::pin(events.merge(ReceiverStream::new(answered)))
}

/// Reads the lab's actions and runs each in a task of its own, up to [`ACTIONS_AT_ONCE`].
/// Ends when the lab closes its side (events go on), when the stream breaks, or when the answers
/// have no reader (the call is over).
async fn read_actions(
    api: impl Actor,
    who: Principal,
    mut inbound: Streaming<proto::WorkRequest>,
    answers: mpsc::Sender<Result<proto::WorkResponse, Status>>,
) {
    let running = Arc::new(Semaphore::new(ACTIONS_AT_ONCE));
    loop {
        let read = async {
            let permit = running.clone().acquire_owned().await;
            (permit, inbound.message().await)
        };
        let (permit, message) = tokio::select! {
            read = read => read,
            () = answers.closed() => return,
        };
        let Ok(permit) = permit else { return };
        match message {
            Ok(Some(action)) => {
                let (api, who, answers) = (api.clone(), who.clone(), answers.clone());
                tokio::spawn(async move {
                    let result = api.act(&who, action).await;
                    let answer = proto::WorkResponse {
                        item: Some(Item::Result(result)),
                    };
                    // No reader means the call is over: nobody to tell.
                    let _ = answers.send(Ok(answer)).await;
                    drop(permit);
                });
            }
            Ok(None) => return,
            Err(status) => {
                let _ = answers.send(Err(status)).await;
                return;
            }
        }
    }
}

/// The answer to the action tagged `tag`, counted by action and code.
pub(super) fn answer(
    tag: u64,
    action: &'static str,
    outcome: Result<Option<proto::Job>, Error>,
    metrics: &Metrics,
) -> proto::WorkResult {
    let (job, error) = match outcome {
        Ok(job) => (job, None),
        Err(err) => (None, Some(action_error(err))),
    };
    let code = error.as_ref().map_or(0, |e| e.code);
    metrics
        .work_actions
        .with_label_values(&[action, code_name(code)])
        .inc();
    proto::WorkResult { tag, job, error }
}

/// What the action's call would have answered. Goes through the one mapping to a status, so an
/// internal cause is logged there and never sent.
fn action_error(err: Error) -> proto::ActionError {
    let field_violations = match &err {
        Error::InvalidArgument(violations) => violations
            .0
            .iter()
            .map(|v| proto::FieldViolation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let status = Status::from(err);
    proto::ActionError {
        code: status.code() as i32,
        message: status.message().to_string(),
        field_violations,
    }
}
