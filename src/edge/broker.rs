//! The edge's link to the broker: the typed client with the trust's credential, connected with
//! retries, and the test catalogue the adapters validate codes against (refreshed when stale
//! or when a code is not found in it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{Client, ConnectOptions};
use crate::domain::{Catalogue, TestCode, TestDef};
use crate::proto;

/// How long a catalogue is used before it is read again.
const CATALOGUE_TTL: Duration = Duration::from_secs(300);
/// Least time between two reads forced by an unknown code, so bad input cannot flood the broker.
const MIN_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Cached {
    catalogue: Arc<Catalogue>,
    names: Arc<HashMap<String, String>>,
    read_at: Instant,
}

/// A connected broker.
#[derive(Debug, Clone)]
pub struct Broker {
    client: Client,
    cached: Arc<RwLock<Cached>>,
}

impl Broker {
    /// Connects, retrying every `retry` until it succeeds or `stop` fires (then `None`); the
    /// catalogue is read before it returns.
    pub async fn connect(
        options: &ConnectOptions,
        retry: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<Self> {
        loop {
            let attempt = async {
                let client = Client::connect_with(options, |e| {
                    e.http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_while_idle(true)
                })
                .await
                .map_err(|e| e.to_string())?;
                let (catalogue, names) =
                    read_catalogue(&client).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(Self {
                    client,
                    cached: Arc::new(RwLock::new(Cached {
                        catalogue: Arc::new(catalogue),
                        names: Arc::new(names),
                        read_at: Instant::now(),
                    })),
                })
            };
            match attempt.await {
                Ok(b) => {
                    tracing::info!(broker.addr = %options.addr, "connected to the broker");
                    return Some(b);
                }
                Err(e) => {
                    tracing::warn!(broker.addr = %options.addr, error = %e, "cannot reach the broker; trying again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The catalogue, read again when stale (a failed read keeps the old one).
    pub async fn catalogue(&self) -> Arc<Catalogue> {
        let stale = self.read().read_at.elapsed() > CATALOGUE_TTL;
        if stale {
            self.refresh().await;
        }
        self.read().catalogue.clone()
    }

    /// The catalogue, read again first unless it was read moments ago: for a code not found.
    pub async fn catalogue_fresh(&self) -> Arc<Catalogue> {
        if self.read().read_at.elapsed() > MIN_REFRESH {
            self.refresh().await;
        }
        self.read().catalogue.clone()
    }

    /// Catalogue code to test name.
    pub fn names(&self) -> Arc<HashMap<String, String>> {
        self.read().names.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.cached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn refresh(&self) {
        match read_catalogue(&self.client).await {
            Ok((catalogue, names)) => {
                let mut c = self
                    .cached
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *c = Cached {
                    catalogue: Arc::new(catalogue),
                    names: Arc::new(names),
                    read_at: Instant::now(),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the test catalogue; keeping the last one")
            }
        }
    }
}

async fn read_catalogue(
    client: &Client,
) -> Result<(Catalogue, HashMap<String, String>), tonic::Status> {
    let tests = client
        .directory()
        .list_tests(proto::ListTestsRequest {})
        .await?
        .into_inner()
        .tests;
    let names = tests
        .iter()
        .map(|t| (t.code.clone(), t.name.clone()))
        .collect();
    let defs = tests.into_iter().filter_map(|t| {
        Some(TestDef {
            code: TestCode::parse(&t.code).ok()?,
            name: t.name,
            discipline: t.discipline,
            specimen: t.specimen,
            stability_minutes: t.stability_minutes.max(1),
            turnaround_minutes: t.turnaround_minutes,
            unit: (!t.unit.is_empty()).then_some(t.unit),
            critical_low: t.critical_low,
            critical_high: t.critical_high,
            loinc: (!t.loinc.is_empty()).then_some(t.loinc),
            snomed: (!t.snomed.is_empty()).then_some(t.snomed),
        })
    });
    let catalogue =
        Catalogue::new(defs).map_err(|e| tonic::Status::internal(format!("catalogue: {e}")))?;
    Ok((catalogue, names))
}
