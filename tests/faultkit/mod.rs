//! Process-level harness for the fault-tolerance tests (issue 4): a `hookd serve`
//! child that the test can signal by pid (SIGTERM, SIGINT, SIGKILL), restart on the
//! same database, start under a lower descriptor limit, and read the log of; a receiver
//! that accepts connections and never answers; and read-only peeks into the database
//! file for what the API cannot show (rows that must be gone, file sizes).
//!
//! It sits beside `common` (the suite's harness) and uses its `Sink`, `TempDir`, waits
//! and its process and HTTP plumbing (`spawn_serve`, `run_to_exit_within`, `send`); what
//! is its own is how it starts servers (its flags, `ulimit -n` through `sh`, `RUST_LOG`
//! at info) and the pid it keeps for signals. Signals go through the `kill` command, so
//! no libc binding is needed.
//!
//! Every wait is a poll with a deadline that fails with what was awaited and seen.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use crate::common::agent;
use crate::common::{
    header_in, parse_body, print_tail, random_hex, read_answer, run_to_exit_within, send,
    server_command, spawn_serve, wait_until_or, HOOKD_BIN, WAIT,
};

/// A `Command` for the hookd binary with a clean `HOOKD_*` environment, logging at info.
pub fn hookd_command(admin: &str) -> Command {
    server_command(HOOKD_BIN, admin, "info")
}

/// A process that ran to its end.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs hookd with `args` and waits (at most `timeout`) for it to exit by itself.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Exited {
    let started = Instant::now();
    let mut cmd = hookd_command(&format!("admin-{}", random_hex(8)));
    let out = run_to_exit_within(cmd.args(args), args, timeout);
    Exited {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        took: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// How to start `hookd serve`; `Server::on(db)` gives the fault suite's defaults.
#[derive(Clone)]
pub struct Setup {
    db: PathBuf,
    /// `(flag, value)`; a value of `None` is a bare flag.
    flags: Vec<(String, Option<String>)>,
    nofile: Option<u32>,
    admin: String,
}

impl Setup {
    /// Sets `flag` to `value`, replacing an earlier value of the same flag.
    pub fn set(mut self, flag: &str, value: &str) -> Setup {
        self.flags.retain(|(f, _)| f != flag);
        self.flags.push((flag.into(), Some(value.into())));
        self
    }
    /// A bare flag such as `--allow-private-targets`.
    pub fn flag(mut self, flag: &str) -> Setup {
        self.flags.push((flag.into(), None));
        self
    }
    /// Starts the server through `sh -c 'ulimit -n N; exec hookd …'`: soft and hard
    /// descriptor limits of `n`, which hookd cannot raise.
    pub fn nofile(mut self, n: u32) -> Setup {
        self.nofile = Some(n);
        self
    }
    pub fn admin(mut self, token: &str) -> Setup {
        self.admin = token.into();
        self
    }
    pub fn start(self) -> Server {
        let mut server = Server {
            child: None,
            port: 0,
            setup: self,
            stderr: Arc::new(Mutex::new(Vec::new())),
            agent: agent(WAIT),
        };
        server.spawn();
        server
    }
    fn argv(&self) -> Vec<String> {
        let mut argv = vec!["serve".to_string(), "--db".into()];
        argv.push(self.db.to_string_lossy().into_owned());
        for (f, v) in &self.flags {
            argv.push(f.clone());
            if let Some(v) = v {
                argv.push(v.clone());
            }
        }
        argv
    }
}

/// A running `hookd serve`, killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    /// The port of the current process (it changes on every start: `--listen` port 0).
    pub port: u16,
    setup: Setup,
    /// Everything every process of this server wrote to stderr, in order.
    stderr: Arc<Mutex<Vec<u8>>>,
    agent: ureq::Agent,
}

/// An HTTP answer: status, lowercased headers, JSON body (`Null` when empty, a string
/// when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// One request with `agent`; `Err` is a transport error (refused, reset, timeout).
pub fn call(
    agent: &ureq::Agent,
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut resp =
        send(agent, &url, method, token, &[], body).map_err(|e| format!("{method} {path}: {e}"))?;
    let (status, headers, raw) =
        read_answer(&mut resp).map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
    Ok(Answer {
        status,
        headers,
        body: parse_body(&raw),
    })
}

/// `POST /v1/events` with `body` as `admin`, for threads that publish without the
/// `Server` at hand; `Err` is a transport error.
pub fn publish_with(
    agent: &ureq::Agent,
    port: u16,
    admin: &str,
    body: &Value,
) -> Result<Answer, String> {
    call(agent, port, Some(admin), "POST", "/v1/events", Some(body))
}

impl Server {
    /// The fault suite's defaults on database `db`: a free port, private targets
    /// allowed (the receivers are loopback), 4 dispatchers, a fast retry schedule with
    /// enough steps that nothing goes dead during a test, 2 s delivery timeout.
    pub fn on(db: &Path) -> Setup {
        Setup {
            db: db.to_path_buf(),
            flags: Vec::new(),
            nofile: None,
            admin: format!("admin-{}", random_hex(16)),
        }
        .set("--listen", "127.0.0.1:0")
        .flag("--allow-private-targets")
        .set("--dispatchers", "4")
        .set("--retry-schedule", "100ms,200ms,500ms,1s,1s,1s,1s,1s,1s,1s")
        .set("--delivery-timeout", "2s")
    }

    pub fn admin(&self) -> &str {
        &self.setup.admin
    }

    pub fn db(&self) -> &Path {
        &self.setup.db
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` (a name such as `TERM`, `INT`) with `kill -s`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
    }

    /// SIGKILL and reap; a no-op when the process is gone already.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the server is not running");
        let status = wait_until_or(timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL, then a new process with the same arguments on the same database.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the server again after it exited by itself.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.spawn();
    }

    /// What every process of this server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until the log holds `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        if wait_until_or(timeout, || self.stderr().contains(needle).then_some(())).is_none() {
            panic!(
                "the server did not log {needle:?} within {timeout:?}; its log:\n{}",
                self.stderr()
            );
        }
    }

    fn spawn(&mut self) {
        let argv = self.setup.argv();
        let mut cmd = match self.setup.nofile {
            None => hookd_command(&self.setup.admin),
            Some(n) => {
                let mut cmd = server_command("sh", &self.setup.admin, "info");
                cmd.arg("-c")
                    .arg(r#"ulimit -n "$0" && exec "$@""#)
                    .arg(n.to_string())
                    .arg(HOOKD_BIN);
                cmd
            }
        };
        let (child, port) = spawn_serve(cmd.args(&argv), &self.stderr);
        self.child = Some(child);
        self.port = port;
    }

    // -- HTTP -----------------------------------------------------------------

    /// A request as admin; `Err` on a transport error.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        call(
            &self.agent,
            self.port,
            Some(&self.setup.admin),
            method,
            path,
            body,
        )
    }

    /// A request as admin; a transport error fails the test.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{e}\nhookd log:\n{}", self.stderr()))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, Some(body))
    }

    /// `GET /healthz` answers 200 within `timeout` (a fresh connection each try).
    pub fn healthy_within(&self, timeout: Duration) -> bool {
        let quick = agent(Duration::from_secs(2));
        wait_until_or(timeout, || {
            call(&quick, self.port, None, "GET", "/healthz", None)
                .ok()
                .filter(|a| a.status == 200 && a.body["status"] == "ok")
        })
        .is_some()
    }

    /// Creates an active hook as admin without the handshake (`"verify": false`);
    /// returns its id and secret.
    pub fn hook(&self, mut body: Value) -> (String, String) {
        body["verify"] = json!(false);
        let a = self.post("/v1/hooks", &body);
        assert_eq!(a.status, 201, "create hook {body}: {a}");
        assert_eq!(a.body["status"], "active", "new hook: {a}");
        (
            a.body["id"].as_str().unwrap().to_string(),
            a.body["secret"].as_str().unwrap().to_string(),
        )
    }

    /// Publishes one event; expects 202 and returns its id.
    pub fn publish(&self, event_type: &str, resource_id: &str) -> String {
        let a = self.post(
            "/v1/events",
            &json!({"type": event_type, "resource_id": resource_id, "data": {"r": resource_id}}),
        );
        assert_eq!(a.status, 202, "publish {event_type}: {a}");
        a.body["id"].as_str().unwrap().to_string()
    }

    /// The first page (≤ 500, newest first) of a hook's delivery log.
    pub fn deliveries(&self, hook_id: &str, status: Option<&str>) -> Vec<Value> {
        let mut path = format!("/v1/hooks/{hook_id}/deliveries?limit=500");
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        let a = self.get(&path);
        assert_eq!(a.status, 200, "{path}: {a}");
        a.body["data"].as_array().cloned().unwrap_or_default()
    }

    /// How many of a hook's deliveries are not finished (pending or failed).
    pub fn open_deliveries(&self, hook_id: &str) -> usize {
        self.deliveries(hook_id, Some("pending")).len()
            + self.deliveries(hook_id, Some("failed")).len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            print_tail("hookd log", &self.stderr(), 6000);
        }
    }
}

// ---------------------------------------------------------------------------
// A receiver that never answers
// ---------------------------------------------------------------------------

/// Accepts connections, reads the request head, and never answers; connections are
/// held until the sender gives up or the receiver is dropped.
pub struct Hang {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Hang {
    pub fn start() -> Hang {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the hanging receiver");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (accepted, heads, stop) = (accepted.clone(), heads.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let (heads, stop) = (heads.clone(), stop.clone());
                            thread::spawn(move || hold(stream, &heads, &stop));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Hang {
            port,
            accepted,
            heads,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The request heads read so far (request line and headers), in arrival order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The `webhook-id` of each request received so far, in arrival order.
    pub fn webhook_ids(&self) -> Vec<String> {
        self.heads()
            .iter()
            .filter_map(|h| header_of(h, "webhook-id"))
            .collect()
    }
}

/// The value of header `name` in a raw request head.
pub fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn hold(mut stream: TcpStream, heads: &Mutex<Vec<String>>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut recorded = false;
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if !recorded {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        recorded = true;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The database file, seen from outside
// ---------------------------------------------------------------------------

/// One integer from a read-only connection to the database file. For what the API
/// cannot show (rows that must be gone); the server may be running (WAL readers
/// never block it).
pub fn db_count(db: &Path, sql: &str, params: &[&str]) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, rusqlite::params_from_iter(params.iter()), |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Bytes on disk of the database file and its WAL.
pub fn db_bytes(db: &Path) -> u64 {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    size(db.to_path_buf()) + size(PathBuf::from(wal))
}

/// The database's `-wal` file.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// A small deterministic PRNG (xorshift64*), seeded and printed by the test so a
/// failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> (Rng, u64) {
        let seed = std::env::var("HOOKD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).expect("getrandom");
                u64::from_le_bytes(b) | 1
            });
        (Rng(seed), seed)
    }
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
