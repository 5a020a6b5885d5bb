//! dbmux connectors: one module (and one cargo feature) per external system.

#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "proxy")]
pub mod proxy;
