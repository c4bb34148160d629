//! Connection floods (issue 4, item 8): with its descriptor limit held at 256 (soft and
//! hard, through `ulimit -n`, so hookd cannot raise it), a flood of more connections
//! than that exhausts hookd's descriptors; `accept()` fails with EMFILE meanwhile. hookd
//! must keep its accept loop and serve again: once the flood's connections are closed,
//! and (with a short `--read-timeout`) even while the flood holds its idle connections
//! open, because hookd cuts them.

mod common;
mod faultkit;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TempDir, WAIT};
use faultkit::Server;

const LIMIT: u32 = 256;
const FLOOD: usize = 600;

/// Opens up to `FLOOD` connections (each given 200 ms to connect: once hookd's accept
/// queue is full the kernel drops new handshakes); every other one sends half a request
/// head and stops, the rest send nothing.
fn flood(port: u16) -> Vec<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut conns = Vec::new();
    for i in 0..FLOOD {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            continue;
        };
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        }
        conns.push(s);
    }
    conns
}

/// Descriptors the process has open.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft "Max open files" limit of the process.
fn nofile_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string()
}

fn start(read_timeout: &str) -> (TempDir, Server) {
    let dir = TempDir::new();
    let server = Server::on(&dir.path.join("hookd.db"))
        .nofile(LIMIT)
        .set("--handlers", "4")
        .set("--dispatchers", "2")
        .set("--read-timeout", read_timeout)
        .start();
    assert_eq!(
        nofile_limit(server.pid()),
        LIMIT.to_string(),
        "the descriptor limit was not applied to hookd"
    );
    assert!(server.healthy_within(WAIT));
    (dir, server)
}

/// The flood really exhausted hookd's descriptors: it reached its limit and an
/// `accept()` (or what follows it) failed with EMFILE.
fn assert_exhausted(server: &Server, conns: &[TcpStream]) {
    assert!(
        conns.len() >= LIMIT as usize / 2,
        "only {} of {FLOOD} flood connections were established",
        conns.len()
    );
    server.wait_log("Too many open files", WAIT);
    eprintln!(
        "{} flood connections established; hookd holds {} descriptors (limit {LIMIT})",
        conns.len(),
        fds(server.pid())
    );
}

#[test]
fn hookd_serves_again_once_a_flood_beyond_its_descriptor_limit_is_closed() {
    // A read timeout longer than the test: only closing the flood frees descriptors.
    let (_dir, server) = start("60s");
    let conns = flood(server.port);
    assert_exhausted(&server, &conns);

    drop(conns);
    let closed = Instant::now();
    assert!(
        server.healthy_within(Duration::from_secs(15)),
        "hookd does not answer /healthz after the flood was closed; log:\n{}",
        server.stderr()
    );
    eprintln!(
        "serving again {:?} after the flood closed",
        closed.elapsed()
    );
    // And keeps serving API requests.
    assert_eq!(server.get("/v1/hooks").status, 200);
}

#[test]
fn hookd_cuts_idle_flood_connections_and_serves_while_they_stay_open() {
    let (_dir, server) = start("1s");
    let flooded = Instant::now();
    let conns = flood(server.port);
    assert_exhausted(&server, &conns);

    // The flood keeps every connection open; hookd drops the idle ones after 1 s,
    // accepts the queued ones (dropped in turn) and then answers.
    assert!(
        server.healthy_within(Duration::from_secs(20)),
        "hookd does not answer /healthz while idle flood connections stay open; log:\n{}",
        server.stderr()
    );
    eprintln!(
        "serving again {:?} after the flood began ({} connections still open on our side)",
        flooded.elapsed(),
        conns.len()
    );
    drop(conns);
}
