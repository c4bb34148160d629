//! The bounds publishing and delivering meet before hookd does any work of its own
//! (issue 5 asks, where a target is out of reach, for the figure of the bound itself):
//!
//! - [`NoopStack`]: hookd's HTTP server doing no work: `api::Http::noop`, started as
//!   `api::Http` starts hookd's (requests served inline on each connection's thread)
//!   on a listener bound by `server::bind` (`TCP_NODELAY` and timeouts inherited),
//!   reading each body and answering 202 with a publish result of hookd's size.
//! - `store::probe::durable_commits`: how many durable commits one SQLite file on this
//!   disk takes per second, each of `--clients` publish-sized rows and nothing else. A
//!   publish is answered only once its event is committed, and a closed-loop client
//!   has one publish out at a time, so no server on one SQLite file can accept more
//!   than `clients × commits/s` single publishes per second from `clients` of them.
//! - `store::probe::outcome_cpu_us`: the CPU of the least a durable delivery log
//!   records per attempt, for batch_max 1's budget (one delivery per attempt).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The one result hookd answers a single publish with, at its size.
const RESULT: &str = r#"{"id":"evt_01KBENCH0000000000000000000","deliveries":1}"#;

/// hookd's HTTP server doing no work (`api::Http::noop`), on a listener bound as
/// `hookd serve` binds its own; dropping it stops accepting.
pub struct NoopStack {
    pub addr: SocketAddr,
    _server: crate::api::Http,
}

impl NoopStack {
    pub fn start() -> io::Result<NoopStack> {
        let listener = crate::server::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Duration::from_secs(30),
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let addr = listener.local_addr()?;
        let server = crate::api::Http::noop(listener, RESULT)?;
        Ok(NoopStack {
            addr,
            _server: server,
        })
    }
}
