//! PostgreSQL: apply (WAL capture comes later).

pub mod apply;
pub mod apply_sql;
pub mod ddl;
