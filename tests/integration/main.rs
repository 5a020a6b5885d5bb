//! Integration tests against real engines started by `scripts/services up`.
//!
//! One test binary; shared helpers live in `support`. Every test makes its own
//! fresh database, so tests run in parallel without seeing each other.

mod support;

mod apply;
mod cache;
mod capture;
mod ddl;
mod equality;
mod kafka;
mod observe;
mod pg_source;
mod pipeline;
mod snapshot;
#[cfg(feature = "sqlserver")]
mod sqlserver;
