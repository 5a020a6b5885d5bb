//! PostgreSQL: logical-replication capture (a `pgoutput` slot) and apply.

pub mod apply;
pub mod apply_sql;
pub mod capture;
pub mod ddl;
pub mod pgoutput;
pub mod replication;
pub mod snapshot;
pub mod source_types;
