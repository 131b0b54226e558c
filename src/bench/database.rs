//! The bench on the PostgreSQL store: a database of its own for each scenario's broker (and for
//! `examples/live_million.rs`), made on the server given with `--store` and dropped afterwards.

use anyhow::Context as _;

/// A database made for one scenario on the PostgreSQL server given with `--store`.
#[derive(Debug)]
pub struct Database {
    /// The server's URL as given (its database is where `CREATE DATABASE` runs).
    admin: String,
    name: String,
}

impl Database {
    /// Creates a database of its own on the server at `admin`. The postgres client blocks on a
    /// runtime of its own, so it runs on a thread outside the bench's.
    pub fn create(admin: &str) -> anyhow::Result<Self> {
        let admin = admin.to_string();
        std::thread::spawn(move || Self::create_here(&admin))
            .join()
            .map_err(|_| anyhow::anyhow!("creating the bench's database panicked"))?
    }

    fn create_here(admin: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!("labaid_bench_{}_{nanos}", std::process::id());
        let mut client = postgres::Client::connect(admin, postgres::NoTls)
            .with_context(|| format!("cannot reach the PostgreSQL server at {admin}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .with_context(|| format!("cannot create the database {name}"))?;
        Ok(Self {
            admin: admin.to_string(),
            name,
        })
    }

    /// The URL of this database: the server's, with its database name replaced.
    pub fn url(&self) -> String {
        database_url(&self.admin, &self.name)
    }

    /// Drops the database (on a thread of its own, as [`Database::create`]).
    pub fn drop_it(self) {
        let _ = std::thread::spawn(move || self.drop_here()).join();
    }

    fn drop_here(self) {
        match postgres::Client::connect(&self.admin, postgres::NoTls) {
            Ok(mut client) => {
                if let Err(e) = client.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )) {
                    tracing::warn!(database = %self.name, error = %e, "cannot drop the bench's database");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach PostgreSQL to drop the bench's database")
            }
        }
    }
}

/// `url` with its database (the path after the host) replaced by `name`; query kept.
fn database_url(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5433/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5433/b1"
        );
        assert_eq!(
            database_url(
                "postgres://u@h1:1,h2:2/db?target_session_attrs=read-write",
                "b2"
            ),
            "postgres://u@h1:1,h2:2/b2?target_session_attrs=read-write"
        );
        assert_eq!(database_url("postgres://u@h", "b3"), "postgres://u@h/b3");
    }
}
