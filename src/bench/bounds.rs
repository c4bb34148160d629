//! The bounds publishing and delivering meet before hookd does any work of its own
//! (issue 5 asks, where a target is out of reach, for the figure of the bound itself):
//!
//! - [`Stack::noop`]: hookd's HTTP server doing no work: `api::Http::noop`, started as
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
//! - [`Stack::bare`]: hookd's design with none of hookd's work: the same HTTP server,
//!   each body handed to one writer thread that commits it as a bare row with
//!   whatever else is waiting (`store::probe::BareWriter`), answered after the commit.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::store::probe::BareWriter;

/// The one result hookd answers a single publish with, at its size.
const RESULT: &str = r#"{"id":"evt_01KBENCH0000000000000000000","deliveries":1}"#;

/// A bound's server, on a listener bound as `hookd serve` binds its own; dropping it
/// stops accepting.
pub struct Stack {
    pub addr: SocketAddr,
    _server: crate::api::Http,
}

impl Stack {
    /// hookd's HTTP server doing no work (`api::Http::noop`).
    pub fn noop() -> io::Result<Stack> {
        let (listener, addr) = listener()?;
        let server = crate::api::Http::noop(listener, RESULT)?;
        Ok(Stack {
            addr,
            _server: server,
        })
    }

    /// hookd's design doing none of hookd's work: its HTTP server (`api::Http::bare`)
    /// hands each body to a [`BareWriter`] on a scratch file in `dir`, and answers once
    /// the writer has committed it. The writer stops, and its file goes, when the
    /// server and the last connection have.
    pub fn bare(dir: &Path) -> io::Result<Stack> {
        let writer = Arc::new(BareWriter::start(dir).map_err(io::Error::other)?);
        let (listener, addr) = listener()?;
        let server = crate::api::Http::bare(listener, RESULT, move |body| writer.write(body))?;
        Ok(Stack {
            addr,
            _server: server,
        })
    }
}

/// A loopback listener bound as `hookd serve` binds its own (`server::bind`).
fn listener() -> io::Result<(TcpListener, SocketAddr)> {
    let listener = crate::server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Duration::from_secs(30),
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
