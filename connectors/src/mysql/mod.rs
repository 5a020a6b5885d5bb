//! MySQL / MariaDB: binlog capture and apply.

pub mod apply;
pub mod apply_sql;
pub mod backlog;
pub mod binlog_table;
pub mod binlog_values;
pub mod capture;
pub mod gtid;
pub mod preflight;
