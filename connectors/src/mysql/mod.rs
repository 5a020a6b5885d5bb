//! MySQL / MariaDB: binlog capture and apply.

pub mod apply;
pub mod apply_sql;
pub mod capture;
