//! MySQL / MariaDB: binlog capture, snapshots and apply.

pub mod apply;
pub mod apply_sql;
pub mod backlog;
pub mod binlog_table;
pub mod binlog_values;
pub mod capture;
pub mod capture_error;
mod catalog_read;
pub mod ddl;
pub mod gtid;
pub mod preflight;
pub mod snapshot;
pub mod source_config;
mod statement;
