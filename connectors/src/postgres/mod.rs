//! PostgreSQL: apply (WAL capture comes later).

pub mod apply;
