//! The handling contexts (`Ctx`: a read connection, a handshake client, the writer's
//! handle), one for each of `--handlers`. A request is served on the thread of the
//! connection it came on (tiny_http's, through `Server::from_listener_inline`) with a
//! context taken from here, and the context goes back when the answer is sent.
//!
//! Serving on the connection's thread saves a thread hand-off per request (the
//! connection thread queued every request for a separate handler thread, which woke to
//! serve it): a tenth less CPU per single publish as measured, BENCHMARKS.md item 26.
//! The pool keeps what the fixed handler threads gave: at most `--handlers` requests
//! are served at once, each with a read connection of its own. A request that finds
//! every context in use waits up to `wait` for one and is then answered 503.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tiny_http::Request;

use super::{respond, serve_one, ApiError, Ctx};
use crate::metrics::Metrics;

pub struct Handlers {
    free: Mutex<Free>,
    /// Signalled when a context comes back; `take` and `close` wait on it.
    returned: Condvar,
    size: usize,
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// Everything behind the one lock, so that a state change and the wake-up for it
/// cannot cross.
struct Free {
    ctxs: Vec<Ctx>,
    /// Threads waiting on `returned`: a context that comes back wakes nobody (no
    /// syscall on the request's path) when none waits.
    waiting: usize,
    /// Set by `close`: every later request is refused.
    closed: bool,
    /// Set once `close` has dropped the contexts: one coming back later is dropped too.
    dropped: bool,
}

impl Handlers {
    pub fn new(ctxs: Vec<Ctx>, wait: Duration, metrics: Arc<Metrics>) -> Handlers {
        Handlers {
            size: ctxs.len(),
            free: Mutex::new(Free {
                ctxs,
                waiting: 0,
                closed: false,
                dropped: false,
            }),
            returned: Condvar::new(),
            wait,
            metrics,
        }
    }

    /// Serves `request` on this thread, or answers 503 when no context frees up in
    /// time or hookd is stopping.
    pub fn serve(&self, request: Request) {
        match self.take() {
            Ok(ctx) => {
                let lent = Lent {
                    pool: self,
                    ctx: Some(ctx),
                };
                serve_one(lent.ctx(), request);
            }
            Err(refusal) => respond(&self.metrics, request, "unknown", Err(refusal)),
        }
    }

    fn take(&self) -> Result<Ctx, ApiError> {
        let deadline = Instant::now() + self.wait;
        let mut free = self.lock();
        loop {
            if free.closed {
                return Err(ApiError::unavailable("hookd is stopping"));
            }
            if let Some(ctx) = free.ctxs.pop() {
                return Ok(ctx);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ApiError::unavailable(
                    "every request handler is busy; retry after the time in Retry-After",
                ));
            }
            free = self.wait_for_return(free, deadline - now);
        }
    }

    fn give_back(&self, ctx: Ctx) {
        let mut free = self.lock();
        if free.dropped {
            // `close` gave up waiting for it: it goes (with its handle on the writer).
            drop(free);
            drop(ctx);
            return;
        }
        free.ctxs.push(ctx);
        let wake = free.waiting > 0;
        let closed = free.closed;
        drop(free);
        if wake {
            if closed {
                // Only `close` waits now, for every context.
                self.returned.notify_all();
            } else {
                // One context wakes one waiter: with many more clients than contexts,
                // waking them all had each return start a stampede that one could win.
                // A woken waiter takes a free context even past its deadline, so the
                // wake-up is never wasted while a context is free.
                self.returned.notify_one();
            }
        }
    }

    /// Stops serving: later requests are answered 503. Waits up to `timeout` for the
    /// requests being served, then drops every context (each holds a handle on the
    /// writer, which stops once all are gone). Returns how many were still busy.
    pub fn close(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut free = self.lock();
        free.closed = true;
        if free.waiting > 0 {
            self.returned.notify_all();
        }
        while free.ctxs.len() < self.size {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            free = self.wait_for_return(free, deadline - now);
        }
        let busy = self.size - free.ctxs.len();
        free.ctxs.clear();
        free.dropped = true;
        busy
    }

    /// Waits (counted in `waiting`) until a context comes back or `timeout` passes.
    fn wait_for_return<'a>(
        &self,
        mut free: MutexGuard<'a, Free>,
        timeout: Duration,
    ) -> MutexGuard<'a, Free> {
        free.waiting += 1;
        let mut free = self
            .returned
            .wait_timeout(free, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        free.waiting -= 1;
        free
    }

    fn lock(&self) -> MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A context out of the pool, given back when dropped: also when a panic unwinds past
/// `serve_one`'s own catch (in writing the answer, say), so the pool never shrinks and
/// `close` never waits for a context that cannot come back.
struct Lent<'a> {
    pool: &'a Handlers,
    ctx: Option<Ctx>,
}

impl Lent<'_> {
    fn ctx(&self) -> &Ctx {
        self.ctx
            .as_ref()
            .expect("a lent context is there until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            self.pool.give_back(ctx);
        }
    }
}
