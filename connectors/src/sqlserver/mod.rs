//! SQL Server as a replica (`[replica.sqlserver]`), through `tiberius` over
//! tokio with rustls.
//!
//! The exactly-once protocol, planning, quarantine and cascades are
//! [`pipeline::apply::Applier`]'s; this module supplies only SQL Server's
//! side of [`pipeline::apply::Engine`]: the T-SQL ([`sql`], pure and
//! unit-tested), the connection, and which server errors are transient.
//!
//! # Limits
//! No SQL Server can run on the build machine (no Linux package, no Docker
//! engine). The generated T-SQL and the type mapping are unit-tested
//! exhaustively; the live tests (`tests/integration/sqlserver.rs`) run only
//! when `DBMUX_TEST_MSSQL_URL` names a server, and say so when skipped.

pub mod apply;
pub mod config;
pub mod sql;

pub use apply::{classify, SqlServerEngine, SqlServerSink};
pub use config::SqlServerSinkConfig;
