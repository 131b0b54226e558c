//! A broker's start on the PostgreSQL store: its options from the config, and the standby wait
//! run off the runtime until it leads or shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use super::{LeaseTiming, PgOptions, PgRecovered, PgTarget};
use crate::config::Config;
use crate::error::Error;
use crate::ops::LeaderHint;
use crate::store::Directory;

/// The store options `config` gives, for a broker whose gRPC listener is bound at `bound`.
pub fn options(config: &Config, url: &str, bound: SocketAddr) -> Result<PgOptions, Error> {
    let target = PgTarget::new(url, config.store_password_file.as_deref())
        .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
    Ok(PgOptions {
        target,
        address: config
            .advertise
            .clone()
            .unwrap_or_else(|| bound.to_string()),
        lease: LeaseTiming::default(),
        store: config.store,
        policy: config.policy.clone(),
        local: Some(super::LocalCopy::new(&config.data_dir)),
    })
}

/// Waits as a standby until this broker leads (`Some`), or until `shutdown` turns true (`None`).
pub async fn lead(
    options: PgOptions,
    directory: Directory,
    leader: LeaderHint,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<PgRecovered>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            stop.store(true, Ordering::Release);
        })
    };
    let url = options.target.url().to_string();
    let opened = tokio::task::spawn_blocking(move || {
        let on_leader: super::OnLeader = Arc::new(move |addr: Option<String>| {
            if let Ok(mut l) = leader.write() {
                *l = addr;
            }
        });
        super::open(&options, directory, &on_leader, &stop)
    })
    .await
    .map_err(|e| Error::Internal(format!("store start stopped: {e}")))?
    .map_err(|e| Error::Internal(format!("cannot open the store at {url}: {e}")));
    watcher.abort();
    opened
}
