//! # byova-storage-sql
//!
//! SQL token stores for providers who keep state in a relational database:
//!
//! - [`SqlTokenStorage`] (async, sqlx): Postgres (`postgres://…`), MySQL and MariaDB
//!   (`mysql://…`), SQLite (`sqlite:///path.db`).
//! - [`SqliteBlockingStorage`] (blocking, rusqlite): SQLite, the same file format and schema.
//!
//! Both link one `libsqlite3-sys` (`cargo tree -i libsqlite3-sys` shows a single version).
//!
//! TLS (rustls, system roots) follows the URL: `sslmode` / `sslrootcert` for Postgres,
//! `ssl-mode` / `ssl-ca` for MySQL. A URL for another host that names no mode gets verified TLS
//! (`verify-full` / `VERIFY_IDENTITY`); [`SqlTokenStorage::connect_with_ca`] adds a private CA.
//!
//! ## Schema
//!
//! One table (default `byova_tokens`; `?table=NAME` in the URL picks another, e.g. one per test
//! run), created by [`SqlTokenStorage::migrate`] and on first connect:
//!
//! | column | meaning |
//! |---|---|
//! | `key_name` (primary key) | `integration` or `org:<org id>` |
//! | `org_id` | the org id, for listing |
//! | `version` | grows by one on every write; rows outlive deletion, so versions never repeat |
//! | `record` | the token record (JSON), `NULL` when deleted or never written |
//! | `lease_owner`, `lease_until`, `lease_seq` | the refresh lease, judged by the database's clock |
//!
//! and `<table>_pending` for authorization URLs waiting for their code (so
//! `exchange_code_for_state` works on another replica): `key_name` (the SHA-256 of the `state`),
//! `record` (the PKCE verifier and redirect URI, JSON), `expires_at` (the database's clock, ten
//! minutes on). Expired rows are deleted by the next save; a take is a read and a `DELETE`, and
//! only the taker whose `DELETE` removed the row gets it.
//!
//! ## Guarantees
//!
//! - A versioned write is one statement, one round trip, on PostgreSQL and SQLite (an upsert
//!   or `UPDATE … WHERE version = …`, `RETURNING version`) and for `Expect::Version` on MySQL;
//!   MySQL's other writes are one transaction (`SELECT … FOR UPDATE`, compare, `UPDATE`,
//!   `COMMIT`), as is the blocking SQLite store's (`BEGIN IMMEDIATE`). A stale version is a
//!   `Conflict`; a connection lost before the write commits leaves the old record, never a
//!   partial one.
//! - Leases are conditional `UPDATE`s on `lease_until` against the database's own clock, so
//!   replicas' clocks do not matter; only the owner releases or extends.
//! - SQLite runs in WAL mode with a 5 s busy timeout and `synchronous = FULL`; writers wait
//!   instead of failing with "database is locked".

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod dialect;
#[cfg(feature = "rusqlite")]
mod rusqlite_store;
mod sqlx_store;

#[cfg(feature = "rusqlite")]
pub use rusqlite_store::SqliteBlockingStorage;
pub use sqlx_store::SqlTokenStorage;
