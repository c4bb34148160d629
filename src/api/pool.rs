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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tiny_http::Request;

use super::{respond, serve_one, ApiError, Ctx};
use crate::metrics::Metrics;

pub struct Handlers {
    free: Mutex<Free>,
    returned: Condvar,
    size: usize,
    closed: AtomicBool,
    wait: Duration,
    metrics: Arc<Metrics>,
}

struct Free {
    ctxs: Vec<Ctx>,
    /// Set once `close` has dropped the contexts: one coming back later is dropped too.
    dropped: bool,
}

impl Handlers {
    pub fn new(ctxs: Vec<Ctx>, wait: Duration, metrics: Arc<Metrics>) -> Handlers {
        Handlers {
            size: ctxs.len(),
            free: Mutex::new(Free {
                ctxs,
                dropped: false,
            }),
            returned: Condvar::new(),
            closed: AtomicBool::new(false),
            wait,
            metrics,
        }
    }

    /// Serves `request` on this thread, or answers 503 when no context frees up in
    /// time or hookd is stopping.
    pub fn serve(&self, request: Request) {
        match self.take() {
            Ok(ctx) => {
                serve_one(&ctx, request);
                self.give_back(ctx);
            }
            Err(refusal) => respond(&self.metrics, request, "unknown", Err(refusal)),
        }
    }

    fn take(&self) -> Result<Ctx, ApiError> {
        let deadline = Instant::now() + self.wait;
        let mut free = self.lock();
        loop {
            if self.closed.load(Ordering::SeqCst) {
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
            free = self
                .returned
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
        drop(free);
        self.returned.notify_all();
    }

    /// Stops serving: later requests are answered 503. Waits up to `timeout` for the
    /// requests being served, then drops every context (each holds a handle on the
    /// writer, which stops once all are gone). Returns how many were still busy.
    pub fn close(&self, timeout: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        self.returned.notify_all();
        let deadline = Instant::now() + timeout;
        let mut free = self.lock();
        while free.ctxs.len() < self.size {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            free = self
                .returned
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let busy = self.size - free.ctxs.len();
        free.ctxs.clear();
        free.dropped = true;
        busy
    }

    fn lock(&self) -> MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}
