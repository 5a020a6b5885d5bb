//! dbmux core: the change event and everything that moves it, with no database drivers.
//!
//! Dependency direction: the `dbmux` binary → `connectors` → `pipeline`.

pub mod batch;
pub mod capture_state;
pub mod cascade;
pub mod codec;
pub mod ddl;
pub mod envelope;
pub mod event;
pub mod filter;
pub mod log;
pub mod metrics;
pub mod position;
pub mod replica;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod value;

pub use event::{ChangeEvent, Op, Row, Transaction, TxnMeta};
pub use position::{MysqlPosition, Position};
pub use schema::{ColumnDef, ColumnType, TableId, TableSchema};
pub use value::Value;
