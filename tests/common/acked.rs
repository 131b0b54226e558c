//! Acknowledged submissions under load: submitters that record every order a broker
//! acknowledged, and the check that a broker holds each of them exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use labaid::client::Client;
use labaid::domain::Timestamp;
use labaid::proto::Priority;

use super::pg::PgBroker;
use super::{all_requests, submission, submit};

/// Acknowledged submissions: order number → request id.
pub type Acked = Arc<Mutex<HashMap<String, String>>>;

/// Submits orders `<prefix>-<n>` from RJ1 one after another until a call fails or `stop` is
/// set; records each acknowledged one.
pub async fn submit_until_failure(
    client: Client,
    prefix: String,
    acked: Acked,
    stop: Arc<Mutex<bool>>,
) {
    for n in 0..100_000u32 {
        if *stop.lock().unwrap() {
            return;
        }
        let order = format!("{prefix}-{n}");
        let mut requests = client.requests();
        let call = requests.submit_request(submission(&order, Priority::Urgent, Timestamp::now()));
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(r)) => {
                let id = r.into_inner().request.expect("request").id;
                acked.lock().unwrap().insert(order, id);
            }
            _ => return,
        }
    }
}

/// Every acknowledged submission is held exactly once, under the id it was acknowledged with;
/// returns how many requests the broker holds.
pub async fn verify(broker: &PgBroker, acked: &Acked) -> usize {
    let held = all_requests(&broker.client("RJ1").await).await;
    let mut orders = HashSet::new();
    let mut ids = HashSet::new();
    for r in &held {
        assert!(
            orders.insert(r.order_number.clone()),
            "order {} held twice",
            r.order_number
        );
        assert!(ids.insert(r.id.clone()), "request {} held twice", r.id);
    }
    let by_order: HashMap<_, _> = held
        .iter()
        .map(|r| (r.order_number.clone(), r.id.clone()))
        .collect();
    for (order, id) in acked.lock().unwrap().iter() {
        assert_eq!(
            by_order.get(order),
            Some(id),
            "acknowledged order {order} is missing or changed id"
        );
    }
    held.len()
}

/// Submits from four clients for `for_ms`, then returns their stop flag and tasks (they go on
/// until a call fails or the flag is set).
pub async fn load(
    broker: &PgBroker,
    cycle: usize,
    acked: &Acked,
    for_ms: u64,
) -> (Arc<Mutex<bool>>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop, tasks) = submitters(&broker.client("RJ1").await, &format!("c{cycle}"), 4, acked);
    tokio::time::sleep(Duration::from_millis(for_ms)).await;
    (stop, tasks)
}

/// Starts `count` submitters on `client`, ordering `<prefix>-t<n>-<m>`, and returns their stop
/// flag and tasks (they go on until a call fails or the flag is set).
pub fn submitters(
    client: &Client,
    prefix: &str,
    count: usize,
    acked: &Acked,
) -> (Arc<Mutex<bool>>, Vec<tokio::task::JoinHandle<()>>) {
    let stop = Arc::new(Mutex::new(false));
    let tasks = (0..count)
        .map(|t| {
            tokio::spawn(submit_until_failure(
                client.clone(),
                format!("{prefix}-t{t}"),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    (stop, tasks)
}

/// Waits for submitters to end, each within 15 s: after a kill, the calls they had in flight are
/// never answered, and only the answered ones count.
pub async fn settle(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
}

/// Submits order `order` (urgent) on `client` and records it as acknowledged.
pub async fn submit_acked(client: &Client, order: &str, acked: &Acked) {
    let request = submit(
        client,
        submission(order, Priority::Urgent, Timestamp::now()),
    )
    .await;
    acked.lock().unwrap().insert(order.into(), request.id);
}
