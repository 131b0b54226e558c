//! live_million on the PostgreSQL store: a database of its own on the server given with
//! `--store`, opened through the store as a broker would, its size, and the lease a killed broker
//! leaves behind waited out, so that a restart measures recovery rather than a takeover.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use labaid::bench::database::Database;
use labaid::config::Config;
use labaid::store::postgres::{
    self, LeaseTiming, LocalCopy, OnLeader, PgOptions, PgRecovered, PgTarget,
};

/// A database made for one measurement, dropped by [`PgStore::drop_it`].
pub(crate) struct PgStore {
    database: Database,
    url: String,
}

impl PgStore {
    /// Makes a database of its own on the server at `admin` (a `postgres://` URL).
    pub(crate) fn create(admin: &str) -> anyhow::Result<Self> {
        if !postgres::is_postgres_url(admin) {
            bail!("--store takes a postgres:// URL");
        }
        let database = Database::create(admin)?;
        let url = database.url();
        Ok(Self { database, url })
    }

    /// The database's URL, for the broker's `--store`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Opens the store as a broker with data directory `data` does at start (it leads at once:
    /// no broker holds the lease).
    pub(crate) fn open(&self, config: &Config, data: &Path) -> anyhow::Result<PgRecovered> {
        let options = PgOptions {
            target: PgTarget::new(&self.url, None)?,
            address: "127.0.0.1:1".into(),
            lease: LeaseTiming::default(),
            store: config.store,
            policy: config.policy.clone(),
            // The broker started on this store later, with this data directory, reads it.
            local: Some(LocalCopy::new(data)),
        };
        let on_leader: OnLeader = Arc::new(|_| {});
        let stop = AtomicBool::new(false);
        postgres::open(&options, config.directory(), &on_leader, &stop)?
            .context("the store did not open")
    }

    /// Bytes of the full snapshot rows, the incremental ones and the journal rows, with their
    /// indexes and TOAST.
    pub(crate) fn bytes(&self) -> anyhow::Result<(u64, u64, u64)> {
        let row = self.client()?.query_one(
            "SELECT pg_total_relation_size('labaid_snapshot'), \
             pg_total_relation_size('labaid_delta'), pg_total_relation_size('labaid_journal')",
            &[],
        )?;
        let size = |i| row.get::<_, i64>(i) as u64;
        Ok((size(0), size(1), size(2)))
    }

    /// Lets the server finish the work a fill leaves it (vacuuming and analysing the rows just
    /// inserted, writing them out at a checkpoint), which in service it does a little at a time
    /// as the rows arrive: without this, autovacuum and the checkpointer share the two cores with
    /// the restarts measured next. The file store's fill likewise ends with its files synced.
    pub(crate) fn settle(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut client = self.client()?;
        // Separate statements: VACUUM refuses to run inside the one transaction a batch makes.
        for statement in [
            "VACUUM (ANALYZE) labaid_journal, labaid_snapshot, labaid_delta",
            "CHECKPOINT",
        ] {
            client
                .batch_execute(statement)
                .with_context(|| format!("settling the database: {statement}"))?;
        }
        Ok(started.elapsed())
    }

    /// Waits until the lease a killed broker held has lapsed, so that the next broker leads at
    /// once instead of waiting as a standby.
    pub(crate) fn wait_for_lease(&self) -> anyhow::Result<()> {
        let mut client = self.client()?;
        let started = Instant::now();
        loop {
            let row = client.query_one(
                "SELECT expires < clock_timestamp() FROM labaid_lease WHERE id = 1",
                &[],
            )?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the lease did not lapse within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Drops the database, or with `keep` leaves it and says where it is.
    pub(crate) fn drop_it(self, keep: bool) {
        if keep {
            println!("kept the database {}", self.url);
        } else {
            self.database.drop_it();
        }
    }

    fn client(&self) -> anyhow::Result<::postgres::Client> {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls)
            .with_context(|| format!("cannot reach {}", self.url))
    }
}
