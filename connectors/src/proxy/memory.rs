//! The bytes of client data the proxy holds at once, bounded.
//!
//! A session holds client bytes in three places that a client controls the
//! size of: a command packet being read (up to `max_allowed_packet`),
//! `COM_STMT_SEND_LONG_DATA` chunks waiting for their execution, and the
//! text of its prepared statements. Each of these takes a [`Lease`] from the
//! proxy-wide [`Budget`] (`max_memory`) for as long as it is held; a request
//! the budget cannot cover is refused with ER_OUT_OF_RESOURCES instead of
//! being buffered, so a thousand clients sending 64 MiB packets at once cost
//! at most `max_memory`, not 64 GiB. Everything else a session buffers is of
//! fixed size (read and write buffers, result frames streamed through in
//! chunks).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Amounts below this are not counted: a packet that small costs less than
/// the session's fixed buffers.
pub const UNCOUNTED: usize = 64 * 1024;

/// The proxy-wide budget of client bytes.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes of the budget, or `None` when that would exceed it.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Lease> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(n).filter(|&x| x <= self.limit)?;
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Some(Lease {
                        budget: self.clone(),
                        n,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Bytes leased now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes taken from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    n: usize,
}

impl Lease {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_bounded_and_given_back() {
        let b = Budget::new(100);
        let a = b.take(60).unwrap();
        assert!(b.take(41).is_none());
        let c = b.take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(b.take(60).is_some());
        drop(c);
        assert_eq!(b.used(), 0);
        assert!(b.take(usize::MAX).is_none());
    }
}
