//! MySQL / MariaDB: binlog capture and apply.

pub mod apply;
pub mod capture;
