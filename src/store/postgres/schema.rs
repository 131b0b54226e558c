//! The schema: versioned migrations applied at start (refinery), and the store format stamp that
//! a broker checks before it touches the data.

use postgres::Client;

use crate::store::StoreError;

/// The store format this build writes and reads (3: snapshot rows compressed, as their
/// `packing` says; 2: in the sectioned snapshot format; rows of formats 1 and 2 are still read). A database stamped with a newer one was written by a
/// newer broker: this one refuses it rather than misread it.
pub const STORE_FORMAT: i32 = 3;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// Applies the migrations this build knows (each once, in order, recorded by refinery in its own
/// table) and checks the format stamp.
pub(crate) fn migrate(client: &mut Client, url: &str) -> Result<(), StoreError> {
    // Two brokers starting together on an empty database would both create the tables: one
    // waits for the other under an advisory lock held only while migrating (and released with
    // the session if this broker dies meanwhile).
    client
        .execute("SELECT pg_advisory_lock(7201823)", &[])
        .map_err(|e| super::connect::pg_error(url, e))?;
    let report = embedded::migrations::runner()
        .set_grouped(true)
        .run(client)
        .map_err(|e| StoreError::Refused(format!("cannot migrate the store at {url}: {e}")));
    client
        .execute("SELECT pg_advisory_unlock(7201823)", &[])
        .map_err(|e| super::connect::pg_error(url, e))?;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(store.migration = %m, "store schema migrated");
    }
    let format: i32 = client
        .query_one("SELECT format FROM labaid_store WHERE id = 1", &[])
        .map_err(|e| super::connect::pg_error(url, e))?
        .get(0);
    check_format(format)
}

/// Refuses a store written in a newer format than this build's.
pub(crate) fn check_format(format: i32) -> Result<(), StoreError> {
    if format > STORE_FORMAT {
        return Err(StoreError::Refused(format!(
            "the store is in format {format}, newer than this broker's {STORE_FORMAT}; run a newer broker"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn refuses_a_newer_format() {
        assert!(super::check_format(super::STORE_FORMAT).is_ok());
        let err = super::check_format(super::STORE_FORMAT + 1).unwrap_err();
        assert!(err.to_string().contains("newer than this broker"), "{err}");
    }
}
