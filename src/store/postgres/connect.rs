//! Where the PostgreSQL store is and how to log in: a `postgres://` URL without a password, the
//! password from a file or the environment (never the command line, where `ps` shows it). Also
//! the sessions whose every call has a deadline, for the leadership path (see [`Session`]).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use postgres::{Client, NoTls};
use tokio_postgres::Config;

use crate::store::StoreError;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "LABAID_PG_PASSWORD";

/// How to reach the database.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    /// The URL as given (it holds no password), for logs and errors.
    url: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").field("url", &self.url).finish()
    }
}

/// True for a store URL that names PostgreSQL.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgTarget {
    /// Parses `url`; the password comes from `password_file` if given, else from
    /// `LABAID_PG_PASSWORD` if set. A password inside the URL is refused.
    pub fn new(url: &str, password_file: Option<&Path>) -> Result<Self, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::Refused(format!(
                "store URL must start with postgres:// (got {:?})",
                url.split(':').next().unwrap_or("")
            )));
        }
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Refused(format!("store URL cannot be read: {e}")))?;
        if config.get_password().is_some() {
            return Err(StoreError::Refused(format!(
                "the store URL holds a password; put it in store_password_file or {PASSWORD_ENV} instead"
            )));
        }
        if let Some(path) = password_file {
            config.password(read_password(path)?);
        } else if let Ok(password) = std::env::var(PASSWORD_ENV) {
            config.password(password);
        }
        // Covers the TCP handshake only: a server that accepts and never answers (paused, hung)
        // holds a connect, or any call, for as long as it keeps acknowledging. The leadership
        // path therefore puts deadlines of its own on every call (`Session`, `within`).
        config.connect_timeout(Duration::from_secs(5));
        // A database host that vanished (no reset ever comes) fails a waiting session in about
        // ten seconds rather than the kernel's two hours of keepalive idle or its minutes of
        // retransmission: the journal's last batch, the snapshot writer and a standby's reads.
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(1));
        config.keepalives_retries(5);
        config.tcp_user_timeout(Duration::from_secs(10));
        config.application_name("labaid");
        Ok(Self {
            config,
            url: url.to_string(),
        })
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new session with `synchronous_commit` on, so that a commit returns only once it is
    /// durable (and, with a synchronous standby configured, once the standby has it).
    pub fn connect(&self) -> Result<Client, StoreError> {
        let mut client = postgres::Config::from(self.config.clone())
            .connect(NoTls)
            .map_err(|e| pg_error(&self.url, e))?;
        client
            .batch_execute(SYNCHRONOUS)
            .map_err(|e| pg_error(&self.url, e))?;
        Ok(client)
    }

    /// A new session as [`PgTarget::connect`] gives, for async calls that the caller can stop
    /// waiting for (see [`within`]). Must run on a tokio runtime.
    pub(crate) async fn session(&self) -> Result<Session, StoreError> {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_error(&self.url, e))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let session = Session { client, connection };
        session
            .client
            .batch_execute(SYNCHRONOUS)
            .await
            .map_err(|e| pg_error(&self.url, e))?;
        Ok(session)
    }
}

/// Every session's first statement: a commit returns only once it is durable (and, with a
/// synchronous standby configured, once the standby has it).
const SYNCHRONOUS: &str = "SET synchronous_commit = on";

/// An async session; dropping it closes the connection, even with a call still unanswered.
pub(crate) struct Session {
    pub client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// True once `e`, from a call made here, means the connection is gone, not just the
    /// statement: it closed, or the server ended it with a FATAL error.
    pub(crate) fn lost(&self, e: &tokio_postgres::Error) -> bool {
        self.client.is_closed()
            || e.is_closed()
            || e.as_db_error().is_some_and(|d| {
                matches!(
                    d.parsed_severity(),
                    Some(
                        tokio_postgres::error::Severity::Fatal
                            | tokio_postgres::error::Severity::Panic
                    )
                )
            })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Runs `work` on a runtime of this thread's own and gives up once `bound` has passed, dropping
/// whatever it was waiting for (sessions close). For plain threads and `spawn_blocking`, never
/// a runtime's worker. `what` names the work in the error.
pub(crate) fn within<T>(
    bound: Duration,
    what: &str,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async { tokio::time::timeout(bound, work).await })
        .unwrap_or_else(|_| {
            Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the database did not answer within {bound:?} ({what})"),
            )))
        })
}

fn read_password(path: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::Refused(format!(
            "cannot read the store password file {}: {e}",
            path.display()
        ))
    })?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(StoreError::Refused(format!(
            "the store password file {} is empty",
            path.display()
        )));
    }
    Ok(password.to_string())
}

/// A database error as a store error, naming the database.
pub(crate) fn pg_error(url: &str, e: postgres::Error) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("PostgreSQL at {url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_password_in_the_url_and_other_schemes() {
        let err = PgTarget::new("postgres://labaid:secret@127.0.0.1/labaid", None).unwrap_err();
        assert!(err.to_string().contains("holds a password"), "{err}");
        let err = PgTarget::new("mysql://127.0.0.1/labaid", None).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn accepts_several_hosts_that_must_accept_writes() {
        // A database failover: the brokers try each host and keep the one that is writable.
        let target = PgTarget::new(
            "postgres://labaid@10.0.0.1:5432,10.0.0.2:5433/labaid?target_session_attrs=read-write",
            None,
        )
        .unwrap();
        assert_eq!(target.config.get_hosts().len(), 2);
        assert_eq!(target.config.get_ports(), &[5432, 5433]);
        assert_eq!(
            target.config.get_target_session_attrs(),
            postgres::config::TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn every_session_has_keepalives_and_a_tcp_user_timeout() {
        let target = PgTarget::new("postgres://labaid@127.0.0.1:5432/labaid", None).unwrap();
        let config = &target.config;
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(10))
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
    }

    #[test]
    fn reads_the_password_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let target = PgTarget::new("postgres://labaid@127.0.0.1:5432/labaid", Some(&path)).unwrap();
        assert_eq!(target.config.get_password(), Some(&b"s3cret"[..]));
        std::fs::write(&path, "\n").unwrap();
        assert!(PgTarget::new("postgres://labaid@127.0.0.1/labaid", Some(&path)).is_err());
    }
}
