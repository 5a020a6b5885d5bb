//! Catalog reads (`information_schema`) of binlog capture that survive the
//! cancellation of the call that asked for them.
//!
//! Capture's runtime drops a pending `next_transaction` to look at its
//! snapshot holds (every 20 ms while a chunk waits) and calls it again; the
//! `Source` contract says that must lose nothing. A table map or a DDL event
//! makes capture read the catalog, and `mysql_async` does not survive a query
//! future dropped half-way: the connection keeps the unread rest of the answer
//! and the next query on it reads garbage ("Packets out of sync", "can't parse:
//! buf doesn't have enough data"). Reconnecting instead is not enough either:
//! on a loaded server a catalog read takes longer than 20 ms, so a read started
//! again on every call never finishes (seen: capture looping on the same DDL
//! event for three minutes while a snapshot waited for it).
//!
//! So a read runs on a task of its own that owns the metadata connection, and
//! runs to its end whatever happens to the caller. A caller that comes back
//! for the same read (same key) awaits that task; the results of the reads of
//! the event being handled are kept until the event is done, so handling it
//! again after a cancellation repeats no read and makes progress each time.

use mysql_async::{Conn, Opts};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use tokio::task::JoinHandle;

/// Why a catalog read failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The metadata connection could not be opened.
    Connect(mysql_async::Error),
    /// The read itself failed; the connection is dropped.
    Read(mysql_async::Error),
}

type Outcome = (Option<Conn>, Result<Box<dyn Any + Send>, ReadError>);

struct InFlight {
    key: String,
    task: JoinHandle<Outcome>,
}

/// The reads in flight or done for the event being handled.
#[derive(Default)]
pub(crate) struct CatalogReads {
    in_flight: Option<InFlight>,
    done: HashMap<String, Box<dyn Any + Send>>,
}

impl CatalogReads {
    /// The result of the read named `key`: kept from an earlier call for the
    /// same event, awaited from a task an earlier (cancelled) call started, or
    /// run now on `meta` (connected with `opts` when `None`). `read` gets the
    /// connection and gives it back with its result.
    ///
    /// Cancel-safe: dropping the returned future leaves the read running; the
    /// next call with the same key picks it up.
    pub(crate) async fn read<T, F, Fut>(
        &mut self,
        meta: &mut Option<Conn>,
        opts: &Opts,
        key: String,
        read: F,
    ) -> Result<T, ReadError>
    where
        T: Clone + Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = (Conn, Result<T, mysql_async::Error>)> + Send + 'static,
    {
        if let Some(v) = self.done.get(&key).and_then(|v| v.downcast_ref::<T>()) {
            return Ok(v.clone());
        }
        if self.in_flight.as_ref().is_some_and(|f| f.key != key) {
            // A read the handling of this event no longer asks for first (it
            // cannot happen while events are handled deterministically; kept
            // safe anyway): let it finish to get the connection back.
            self.settle(meta).await.ok();
        }
        if self.in_flight.is_none() {
            let conn = meta.take();
            let opts = opts.clone();
            let task = tokio::spawn(async move {
                let conn = match conn {
                    Some(c) => c,
                    None => match Conn::new(opts).await {
                        Ok(c) => c,
                        Err(e) => return (None, Err(ReadError::Connect(e))),
                    },
                };
                let (conn, r) = read(conn).await;
                match r {
                    Ok(v) => (Some(conn), Ok(Box::new(v) as Box<dyn Any + Send>)),
                    // The connection may be in any state after an error: not reused.
                    Err(e) => (None, Err(ReadError::Read(e))),
                }
            });
            self.in_flight = Some(InFlight {
                key: key.clone(),
                task,
            });
        }
        let v = self.settle(meta).await?;
        let out = v
            .downcast_ref::<T>()
            .cloned()
            .expect("a read's key names its result type");
        self.done.insert(key, v);
        Ok(out)
    }

    /// Awaits the read in flight (cancel-safe: the task stays in `self` until
    /// it has ended) and puts the connection back.
    async fn settle(&mut self, meta: &mut Option<Conn>) -> Result<Box<dyn Any + Send>, ReadError> {
        let f = self.in_flight.as_mut().expect("a read in flight");
        let outcome = (&mut f.task).await;
        self.in_flight = None;
        match outcome {
            Ok((conn, r)) => {
                if conn.is_some() {
                    *meta = conn;
                }
                r
            }
            Err(e) => Err(ReadError::Read(mysql_async::Error::Other(
                format!("the catalog read task ended abnormally: {e}").into(),
            ))),
        }
    }

    /// The event is handled: its reads' results are not valid for the next.
    pub(crate) fn event_done(&mut self) {
        self.done.clear();
    }

    /// Forgets everything (a new stream starts): a read in flight is aborted
    /// and its connection dropped with it.
    pub(crate) fn reset(&mut self) {
        if let Some(f) = self.in_flight.take() {
            f.task.abort();
        }
        self.done.clear();
    }
}
