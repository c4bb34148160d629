//! Black-box harness for hookd's integration tests.
//!
//! It starts the real `hookd` binary on `127.0.0.1:0` with a database in a private
//! temp directory, talks to it over HTTP (ureq, and raw TCP for malformed requests),
//! and runs loopback receivers (`Sink`) that record every request and answer from a
//! per-test script. It must not reach into the crate's internals: everything the tests
//! know comes from SPEC.md and README.md ("Choices where the SPEC is silent").
//!
//! Every wait is a poll loop with a deadline that fails the test with a message saying
//! what was awaited and what was seen; there is no sleep-and-hope.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The longest any single wait in the suite may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Environment variables that would change the server's configuration behind the
/// test's back if they leaked in from the developer's shell.
const HOOKD_ENV: &[&str] = &[
    "HOOKD_DB",
    "HOOKD_LISTEN",
    "HOOKD_DISPATCHERS",
    "HOOKD_ALLOW_PRIVATE_TARGETS",
    "HOOKD_RETRY_SCHEDULE",
    "HOOKD_DELIVERY_TIMEOUT",
    "HOOKD_DISABLE_AFTER",
    "HOOKD_TRUST_TARGET_HOSTS",
    "HOOKD_ADMIN_TOKEN",
    "HOOKD_HANDLERS",
    "HOOKD_MAX_BODY",
    "HOOKD_ALLOW_TARGET_NETS",
    "HOOKD_RESOLVE",
    "HOOKD_SECRETS_KEY_FILE",
    "HOOKD_RATE_LIMIT",
    "HOOKD_MAX_HOOKS_PER_TENANT",
    "HOOKD_READ_TIMEOUT",
    "HOOKD_SHUTDOWN_TIMEOUT",
    "HOOKD_RETENTION",
];

/// Proxy variables: every client in the suite talks to 127.0.0.1, with nothing between.
pub const PROXY_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// The binary under test.
pub const HOOKD_BIN: &str = env!("CARGO_BIN_EXE_hookd");

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("getrandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `f` every 20 ms until it yields a value, failing the test after `timeout`.
/// `what` completes the sentence "timed out waiting for …".
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The `field` of each item in a list answer's `data` array.
#[track_caller]
pub fn data_field<'a>(list: &'a Value, field: &str) -> Vec<&'a Value> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| &item[field])
        .collect()
}

/// Percent-encodes a query-string value (cursors are opaque and may hold `+`, `=`, `/`),
/// as the server's query parser (`url::form_urlencoded`) reads it.
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Now, as an RFC 3339 UTC string, shifted by `offset_ms` (may be negative).
pub fn rfc3339_now(offset_ms: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(offset_ms);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format time")
}

/// Asserts that `v` is an RFC 3339 timestamp in UTC.
pub fn assert_rfc3339_utc(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{what} = {s:?} is not RFC 3339: {e}"));
    assert!(t.offset().is_utc(), "{what} = {s:?} is not UTC");
}

/// A directory under the system temp dir, removed with everything in it on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("hookd-test-{}", random_hex(8)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `n` characters of `text` on stderr under `title`: a failing test's view of a
/// server's log.
pub fn print_tail(title: &str, text: &str, n: usize) {
    let tail: String = text
        .chars()
        .rev()
        .take(n)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    eprintln!("--- {title} (tail) ---\n{tail}\n---");
}

// ---------------------------------------------------------------------------
// Child processes (shared with faultkit)
// ---------------------------------------------------------------------------

/// `program` (hookd, or a shell that execs it) with a clean environment: no `HOOKD_*`
/// or proxy variables from the developer's shell, `HOOKD_ADMIN_TOKEN` = `admin` and
/// `RUST_LOG` = `log`.
pub fn server_command(program: &str, admin: &str, log: &str) -> Command {
    let mut cmd = Command::new(program);
    for var in HOOKD_ENV.iter().chain(PROXY_ENV) {
        cmd.env_remove(var);
    }
    cmd.env("HOOKD_ADMIN_TOKEN", admin).env("RUST_LOG", log);
    cmd
}

/// Reads the child's output on two threads: the lines of its stdout come out of the
/// returned channel (read to the end even once nobody listens, so the child never blocks
/// on a pipe); the bytes of its stderr are appended to `stderr`, a clone of which the
/// thread holds until the pipe closes.
pub fn drain_output(child: &mut Child, stderr: &Arc<Mutex<Vec<u8>>>) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("child stdout");
    let mut pipe = child.stderr.take().expect("child stderr");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let sink = Arc::clone(stderr);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });
    rx
}

/// Starts `cmd` with stdin closed and stdout and stderr piped.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hookd")
}

/// Starts `cmd`, a `hookd serve` (stdin closed, stdout and stderr piped), appends what
/// it writes on stderr to `stderr` and waits (at most `WAIT`) for its
/// `listening on http://…` line. Returns the child and its port. If the process exits
/// first, or prints no such line in time (it is killed then), the test fails with what
/// it wrote.
pub fn spawn_serve(cmd: &mut Command, stderr: &Arc<Mutex<Vec<u8>>>) -> (Child, u16) {
    let mut child = spawn_piped(cmd);
    let rx = drain_output(&mut child, stderr);
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let failure = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                    let port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
                    match port {
                        Some(port) => return (child, port),
                        None => break format!("cannot read a port from {line:?}"),
                    }
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break format!("hookd printed no `listening on http://…` line within {WAIT:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = wait_until_or(WAIT, || child.try_wait().ok().flatten());
                break format!("hookd exited ({status:?}) before listening");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    // Let the stderr thread catch up with the last words.
    thread::sleep(Duration::from_millis(100));
    let log = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    panic!("{failure}\nstdout: {seen:?}\nstderr:\n{log}");
}

/// Starts `cmd` (stdin closed, stdout and stderr piped) and waits at most `timeout` for
/// it to exit by itself. `Err` holds what it wrote when it still ran and was killed.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output, Output> {
    let mut child = spawn_piped(cmd);
    let exited = wait_until_or(timeout, || child.try_wait().ok().flatten()).is_some();
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("hookd output");
    if exited {
        Ok(out)
    } else {
        Err(out)
    }
}

/// Runs `cmd` (hookd with `args`) to its end; fails the test, with what it wrote, if it
/// still runs after `timeout`.
pub fn run_to_exit_within<S: std::fmt::Debug>(
    cmd: &mut Command,
    args: &[S],
    timeout: Duration,
) -> Exited {
    let out = output_within(cmd, timeout).unwrap_or_else(|out| {
        panic!(
            "hookd {args:?} was expected to exit but still ran after {timeout:?}\n\
             stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Exited::from(out)
}

// ---------------------------------------------------------------------------
// HTTP plumbing (shared with faultkit)
// ---------------------------------------------------------------------------

/// The suite's HTTP client: every status is an answer, no proxy, no redirects, and a
/// whole request gives up after `timeout`. It reuses a connection only while it has
/// been idle for less than half the shortest `--read-timeout` the suite runs hookd
/// with (1 s, `tests/hostile.rs`): hookd closes a connection idle that long, and one
/// reused just as it closes fails with a transport error that is the client's race,
/// not hookd's fault (seen once in `hostile.rs`, whose raw-socket steps wait about
/// that long between the agent's requests).
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .max_idle_age(Duration::from_millis(500))
        .build()
        .into()
}

/// One request with `agent`: `token` as a bearer token and `headers` when given, `body`
/// as `application/json` when given. `Err` is a transport error (refused, reset,
/// timeout).
pub fn send(
    agent: &ureq::Agent,
    url: &str,
    method: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let auth = auth.as_deref();
    match (method, body) {
        ("GET", None) => with_headers(agent.get(url), auth, headers).call(),
        ("DELETE", None) => with_headers(agent.delete(url), auth, headers).call(),
        ("POST", None) => with_headers(agent.post(url), auth, headers).send_empty(),
        ("PATCH", None) => with_headers(agent.patch(url), auth, headers).send_empty(),
        ("PUT", None) => with_headers(agent.put(url), auth, headers).send_empty(),
        (m @ ("POST" | "PATCH" | "PUT"), Some(v)) => {
            let bytes = serde_json::to_vec(v).unwrap();
            let b = match m {
                "POST" => agent.post(url),
                "PATCH" => agent.patch(url),
                _ => agent.put(url),
            };
            with_headers(b.content_type("application/json"), auth, headers).send(bytes)
        }
        (m, b) => panic!("unsupported request in harness: {m} with body {b:?}"),
    }
}

fn with_headers<B>(
    mut b: ureq::RequestBuilder<B>,
    auth: Option<&str>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    if let Some(a) = auth {
        b = b.header("Authorization", a);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b
}

/// An answer's status, lowercased headers and body bytes; `Err` if the body could not
/// be read.
pub fn read_answer(
    resp: &mut ureq::http::Response<ureq::Body>,
) -> Result<(u16, Headers, Vec<u8>), ureq::Error> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let raw = resp.body_mut().read_to_vec()?;
    Ok((status, headers, raw))
}

/// A body as JSON: `Value::Null` when empty, a JSON string holding the text when it is
/// not JSON.
pub fn parse_body(raw: &[u8]) -> Value {
    if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
    }
}

/// The value of header `name` among lowercased `headers`.
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------
// Signatures (Standard Webhooks)
// ---------------------------------------------------------------------------

/// The `v1,<base64>` token a Standard Webhooks receiver expects for this message.
pub fn expected_signature(secret: &str, msg_id: &str, timestamp: &str, body: &[u8]) -> String {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret {secret:?} does not start with whsec_"));
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("secret {secret:?} is not standard base64: {e}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("hmac key");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(sig.as_slice())
    )
}

/// True when one of the space-separated tokens in `header` is the signature of the
/// message under `secret`.
pub fn signature_matches(
    secret: &str,
    msg_id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let want = expected_signature(secret, msg_id, timestamp, body);
    header.split(' ').any(|token| token == want)
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

/// How to start hookd; the defaults are the suite's fast settings.
#[derive(Clone)]
pub struct Options {
    schedule: String,
    disable_after: Option<u32>,
    allow_private: bool,
    delivery_timeout: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            schedule: "100ms,100ms,100ms".into(),
            disable_after: None,
            allow_private: true,
            delivery_timeout: "2s".into(),
            extra: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Options {
    /// `--retry-schedule`: the delays before each retry.
    pub fn schedule(mut self, s: &str) -> Options {
        self.schedule = s.into();
        self
    }
    /// `--disable-after N`.
    pub fn disable_after(mut self, n: u32) -> Options {
        self.disable_after = Some(n);
        self
    }
    /// Without `--allow-private-targets` (the suite passes it by default so that
    /// loopback sinks work): the private-target guard is on.
    pub fn strict_targets(mut self) -> Options {
        self.allow_private = false;
        self
    }
    /// `--delivery-timeout` (the suite's default is 2s); also the handshake timeout.
    pub fn delivery_timeout(mut self, t: &str) -> Options {
        self.delivery_timeout = t.into();
        self
    }
    /// An environment variable for the server (set after the suite's own, so this
    /// may also override `RUST_LOG` or set a `*_PROXY` the suite otherwise removes).
    pub fn env(mut self, k: &str, v: &str) -> Options {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Any further flags.
    pub fn arg(mut self, a: &str) -> Options {
        self.extra.push(a.into());
        self
    }
    pub fn start(self) -> Hookd {
        Hookd::with(self)
    }
}

/// A running `hookd serve` child process with its own database; killed on drop.
pub struct Hookd {
    child: Option<Child>,
    pub port: u16,
    /// The admin token given through `HOOKD_ADMIN_TOKEN`.
    pub admin: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    agent: ureq::Agent,
    // Last so that the child is gone before its database directory is removed.
    dir: TempDir,
}

/// A hook as created: its id, its secret (shown once) and the whole create response.
#[derive(Clone, Debug)]
pub struct Hook {
    pub id: String,
    pub secret: String,
    pub body: Value,
}

/// A process that ran to its end (see `Hookd::run_to_exit`).
#[derive(Debug)]
pub struct Exited {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Exited {
    fn from(out: Output) -> Exited {
        Exited {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// An API key as created: its id and its token (shown once).
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub token: String,
}

impl Hookd {
    /// Starts hookd with the suite's default options.
    pub fn start() -> Hookd {
        Options::default().start()
    }

    pub fn options() -> Options {
        Options::default()
    }

    pub fn with(opts: Options) -> Hookd {
        let dir = TempDir::new();
        let db = dir.path.join("hookd.db");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--db".into(),
            db.to_string_lossy().into_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--dispatchers".into(),
            "4".into(),
            "--retry-schedule".into(),
            opts.schedule.clone(),
            "--delivery-timeout".into(),
            opts.delivery_timeout.clone(),
        ];
        if opts.allow_private {
            args.push("--allow-private-targets".into());
        }
        if let Some(n) = opts.disable_after {
            args.push("--disable-after".into());
            args.push(n.to_string());
        }
        // The scheduler's periodic re-read of queued hooks is a safety net for changes
        // another process (the CLI) makes. The suite puts it an hour away, so every
        // test shows that this server's own work reaches the dispatchers by its
        // wake-ups; tests of the CLI beside a running server set a short one.
        if !opts
            .extra
            .iter()
            .any(|a| a.starts_with("--resync-interval"))
        {
            args.push("--resync-interval".into());
            args.push("1h".into());
        }
        args.extend(opts.extra.iter().cloned());
        let mut hookd = Hookd {
            child: None,
            port: 0,
            admin: format!("admin-{}", random_hex(16)),
            args,
            env: opts.env.clone(),
            stderr: Arc::new(Mutex::new(Vec::new())),
            agent: agent(WAIT),
            dir,
        };
        hookd.spawn();
        hookd
    }

    /// The database file this server uses.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path.join("hookd.db")
    }

    /// The argument list the server was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The private directory holding the database (and, by default, its key file).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// Kills the process (SIGKILL: no graceful shutdown) and starts it again with the
    /// same arguments and database. The port changes.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Like `restart`, with the argument list changed by `edit` first (the change is
    /// kept for later restarts).
    pub fn restart_with(&mut self, edit: impl FnOnce(&mut Vec<String>)) {
        self.kill();
        edit(&mut self.args);
        self.spawn();
    }

    /// Runs the binary once more with `args` and the same environment, expecting it to
    /// exit by itself (a start-up refusal); fails the test if it is still running after
    /// `WAIT`. The running server, if any, is left alone.
    pub fn run_to_exit(&self, args: &[String]) -> Exited {
        let mut cmd = self.command();
        run_to_exit_within(cmd.args(args), args, WAIT)
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("hookd is running").id()
    }

    /// What the server wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The binary with the server's environment.
    fn command(&self) -> Command {
        let mut cmd = server_command(HOOKD_BIN, &self.admin, "warn");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) {
        let (child, port) = spawn_serve(self.command().args(&self.args), &self.stderr);
        self.child = Some(child);
        self.port = port;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    // -- HTTP ---------------------------------------------------------------

    /// One request through ureq. `body` is sent as `application/json` when given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        let mut resp = send(&self.agent, &self.url(path), method, token, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: transport error {e}\nhookd stderr:\n{}",
                    self.stderr()
                )
            });
        let (status, headers, raw) = read_answer(&mut resp)
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        Resp::new(format!("{method} {path}"), status, headers, raw)
    }

    pub fn get(&self, token: &str, path: &str) -> Resp {
        self.request("GET", path, Some(token), &[], None)
    }
    pub fn post(&self, token: &str, path: &str, body: &Value) -> Resp {
        self.request("POST", path, Some(token), &[], Some(body))
    }
    /// POST with no body at all (as `curl -X POST` sends it).
    pub fn post_empty(&self, token: &str, path: &str) -> Resp {
        self.request("POST", path, Some(token), &[], None)
    }
    pub fn patch(&self, token: &str, path: &str, body: &Value) -> Resp {
        self.request("PATCH", path, Some(token), &[], Some(body))
    }
    pub fn delete(&self, token: &str, path: &str) -> Resp {
        self.request("DELETE", path, Some(token), &[], None)
    }

    /// Sends raw bytes on a fresh TCP connection and reads the whole response.
    pub fn raw(&self, req: &Raw) -> Resp {
        raw_exchange(self.port, req)
    }

    /// `GET /healthz` answers 200 `{"status":"ok"}`.
    pub fn assert_healthy(&self) {
        let r = self.request("GET", "/healthz", None, &[], None);
        assert_eq!(r.status, 200, "healthz: {r}");
        assert_eq!(r.body["status"], "ok", "healthz: {r}");
    }

    // -- Domain helpers -----------------------------------------------------

    /// `POST /v1/keys` as admin; expects 201.
    pub fn key(&self, role: &str, tenant: Option<&str>) -> Key {
        let mut body = json!({ "role": role });
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let v = self.post(&self.admin, "/v1/keys", &body).expect(201);
        let id = v["id"].as_str().expect("key id").to_string();
        let token = v["token"].as_str().expect("key token").to_string();
        assert!(id.starts_with("key_"), "key id {id:?}");
        Key { id, token }
    }

    /// `POST /v1/hooks` with `token`; expects 201 and an active hook with a secret.
    pub fn create_hook_as(&self, token: &str, body: Value) -> Hook {
        let v = self.post(token, "/v1/hooks", &body).expect(201);
        let id = v["id"].as_str().expect("hook id").to_string();
        let secret = v["secret"].as_str().expect("hook secret").to_string();
        assert!(id.starts_with("hook_"), "hook id {id:?}");
        assert!(secret.starts_with("whsec_"), "hook secret {secret:?}");
        assert_eq!(v["status"], "active", "new hook is not active: {v}");
        Hook {
            id,
            secret,
            body: v,
        }
    }

    /// Creates a hook as admin (tenant `default`).
    pub fn create_hook(&self, body: Value) -> Hook {
        self.create_hook_as(&self.admin, body)
    }

    /// A skinny hook for one event pattern, as admin.
    pub fn hook(&self, target_url: &str, event: &str) -> Hook {
        self.create_hook(json!({ "target_url": target_url, "event": event }))
    }

    /// `POST /v1/events` as admin; expects 202 and returns the body.
    pub fn publish_json(&self, body: Value) -> Value {
        self.post(&self.admin, "/v1/events", &body).expect(202)
    }

    /// Publishes one event (tenant `default`) and returns its id.
    pub fn publish(&self, event_type: &str, resource_id: &str, data: Value) -> String {
        let v = self.publish_json(json!({
            "type": event_type, "resource_id": resource_id, "data": data
        }));
        let id = v["id"].as_str().expect("event id").to_string();
        assert!(id.starts_with("evt_"), "event id {id:?}");
        id
    }

    /// The ids of the stored events of `event_type` in tenant `default` (first page,
    /// up to 500), as admin.
    pub fn event_ids(&self, event_type: &str) -> Vec<String> {
        let v = self
            .get(
                &self.admin,
                &format!("/v1/events?type={event_type}&limit=500"),
            )
            .expect(200);
        data_field(&v, "event_id")
            .into_iter()
            .map(|id| {
                id.as_str()
                    .unwrap_or_else(|| panic!("an event without event_id: {v}"))
                    .to_string()
            })
            .collect()
    }

    /// The hook's delivery log (first page, newest first), as admin.
    pub fn deliveries(&self, hook_id: &str, status: Option<&str>) -> Vec<Value> {
        let mut path = format!("/v1/hooks/{hook_id}/deliveries?limit=500");
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        let v = self.get(&self.admin, &path).expect(200);
        v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("deliveries without data: {v}"))
            .clone()
    }

    /// The delivery of `hook_id` that carries `event_id`, once its status is `status`.
    pub fn wait_delivery(&self, hook_id: &str, event_id: &str, status: &str) -> Value {
        let mut last = Vec::new();
        let found = wait_until_or(WAIT, || {
            last = self.deliveries(hook_id, None);
            last.iter()
                .find(|d| {
                    d["status"] == status
                        && d["event_ids"]
                            .as_array()
                            .is_some_and(|ids| ids.iter().any(|i| i == event_id))
                })
                .cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for the delivery of {event_id} to hook {hook_id} to be \
                 {status:?}; the log says: {}",
                serde_json::to_string_pretty(&last).unwrap()
            )
        })
    }

    /// Polls `GET /v1/hooks/{id}` until `pred` holds of the response.
    pub fn wait_hook(&self, hook_id: &str, what: &str, pred: impl Fn(&Resp) -> bool) -> Resp {
        let mut last = None;
        let found = wait_until_or(WAIT, || {
            let r = self.get(&self.admin, &format!("/v1/hooks/{hook_id}"));
            let ok = pred(&r);
            last = Some(r.to_string());
            ok.then_some(r)
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for hook {hook_id} to be {what}; last answer: {}",
                last.unwrap_or_default()
            )
        })
    }
}

impl Drop for Hookd {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            print_tail("hookd stderr", &self.stderr(), 4000);
        }
    }
}

/// Like `wait_until` but gives `None` on timeout so the caller can explain.
pub fn wait_until_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// A response: status, lowercased headers, and the body parsed as JSON
/// (`Value::Null` when empty, a JSON string holding the text when it is not JSON).
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Resp {
    fn new(what: String, status: u16, headers: Vec<(String, String)>, raw: Vec<u8>) -> Resp {
        Resp {
            what,
            status,
            headers,
            body: parse_body(&raw),
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self}");
        self.body
    }

    /// Asserts an error answer: the status, `{"error":{"code","message"}}` with this
    /// code and a non-empty message; returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        let (got, msg) = self.expect_error_any(status);
        assert_eq!(got, code, "wrong error code: {self}");
        msg
    }

    /// Asserts an error answer with any code: the status and
    /// `{"error":{"code","message"}}` with non-empty strings; returns (code, message).
    #[track_caller]
    pub fn expect_error_any(&self, status: u16) -> (String, String) {
        assert_eq!(self.status, status, "unexpected status: {self}");
        let err = &self.body["error"];
        assert!(err.is_object(), "no {{\"error\": {{…}}}} object: {self}");
        let text = |k: &str| {
            let v = err[k]
                .as_str()
                .unwrap_or_else(|| panic!("error.{k} is not a string: {self}"));
            assert!(!v.is_empty(), "empty error.{k}: {self}");
            v.to_string()
        };
        (text("code"), text("message"))
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.raw);
        let text: String = text.chars().take(2000).collect();
        write!(f, "{} -> {} {}", self.what, self.status, text)
    }
}

// ---------------------------------------------------------------------------
// Raw TCP requests (for what a well-behaved client would never send)
// ---------------------------------------------------------------------------

/// A hand-built HTTP/1.1 request.
pub struct Raw {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: Option<u64>,
}

impl Raw {
    pub fn new(method: &str, path: &str) -> Raw {
        Raw {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            content_length: None,
        }
    }
    pub fn get(path: &str) -> Raw {
        Raw::new("GET", path)
    }
    pub fn post(path: &str) -> Raw {
        Raw::new("POST", path)
    }
    pub fn header(mut self, k: &str, v: &str) -> Raw {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn auth(self, token: &str) -> Raw {
        let v = format!("Bearer {token}");
        self.header("Authorization", &v)
    }
    /// A body with `Content-Type: application/json`.
    pub fn json(self, body: impl Into<Vec<u8>>) -> Raw {
        self.body("application/json", body)
    }
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Raw {
        self.headers
            .push(("Content-Type".into(), content_type.into()));
        self.body = body.into();
        self
    }
    /// Declares this `Content-Length` whatever the body really is.
    pub fn declared_length(mut self, n: u64) -> Raw {
        self.content_length = Some(n);
        self
    }
    pub fn describe(&self) -> String {
        format!(
            "{} {} ({} body bytes)",
            self.method,
            self.path,
            self.body.len()
        )
    }
    fn head(&self, port: u16) -> Vec<u8> {
        let mut s = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        let len = self.content_length.unwrap_or(self.body.len() as u64);
        if len > 0 || self.method == "POST" || self.method == "PATCH" {
            s.push_str(&format!("Content-Length: {len}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Writes the request from a separate thread (the server may answer before reading a
/// large body) while this thread reads the response.
fn raw_exchange(port: u16, req: &Raw) -> Resp {
    let what = req.describe();
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to hookd");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut bytes = req.head(port);
    bytes.extend_from_slice(&req.body);
    let w = thread::spawn(move || {
        // Errors here are expected when the server answers early and closes.
        let _ = writer.write_all(&bytes);
        let _ = writer.flush();
    });
    let result = read_response(&stream);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = w.join();
    match result {
        Ok((status, headers, body)) => Resp::new(what, status, headers, body),
        Err(e) => panic!("{what}: no complete HTTP response from hookd: {e}"),
    }
}

/// Lowercased header names with their values, in order.
pub type Headers = Vec<(String, String)>;

fn read_response(stream: &TcpStream) -> Result<(u16, Headers, Vec<u8>), String> {
    let mut r = BufReader::new(stream);
    let mut status_line = String::new();
    r.read_line(&mut status_line)
        .map_err(|e| format!("reading status line: {e}"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| format!("reading headers: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        body.resize(len, 0);
        r.read_exact(&mut body)
            .map_err(|e| format!("reading {len} body bytes: {e}"))?;
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)
                .map_err(|e| format!("reading chunk size: {e}"))?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)
                .map_err(|e| format!("reading chunk: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body)
            .map_err(|e| format!("reading body to EOF: {e}"))?;
    }
    Ok((status, headers, body))
}

// ---------------------------------------------------------------------------
// The loopback receiver
// ---------------------------------------------------------------------------

/// How the sink answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Held this long before answering (a slow receiver).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn ok() -> Reply {
        Reply::status(200)
    }
    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

impl From<u16> for Reply {
    fn from(status: u16) -> Reply {
        Reply::status(status)
    }
}

/// One request the sink received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The status the sink answered with.
    pub answered: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    /// The header, or a test failure naming it.
    #[track_caller]
    pub fn must_header(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("delivery lacks header {name}: {}", self.summary()))
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("delivery body is not JSON ({e}): {}", self.summary()))
    }
    /// The events the body carries: the object itself, or the array's items.
    pub fn events(&self) -> Vec<Value> {
        match self.json() {
            Value::Array(items) => items,
            v => vec![v],
        }
    }
    pub fn webhook_id(&self) -> &str {
        self.must_header("webhook-id")
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.answered)
    }
    pub fn summary(&self) -> String {
        format!(
            "{} {} answered {} webhook-id={:?} body={}",
            self.method,
            self.path,
            self.answered,
            self.header("webhook-id"),
            String::from_utf8_lossy(&self.body)
        )
    }
    /// Asserts the Standard Webhooks headers and that the signature verifies with
    /// `secret`; also that the timestamp is current.
    #[track_caller]
    pub fn assert_signed(&self, secret: &str) {
        let id = self.must_header("webhook-id");
        let ts = self.must_header("webhook-timestamp");
        let sig = self.must_header("webhook-signature");
        let secs: i64 = ts
            .parse()
            .unwrap_or_else(|_| panic!("webhook-timestamp {ts:?} is not unix seconds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now - secs).abs() <= 60,
            "webhook-timestamp {secs} is not current (now {now})"
        );
        for token in sig.split(' ') {
            assert!(
                token.starts_with("v1,"),
                "signature token {token:?} is not v1,<base64> in {sig:?}"
            );
        }
        assert!(
            signature_matches(secret, id, ts, &self.body, sig),
            "webhook-signature does not verify with the hook's secret\n  header: {sig}\n  \
             expected: {}\n  request: {}",
            expected_signature(secret, id, ts, &self.body),
            self.summary()
        );
    }
}

/// How the sink answers an intent-verification handshake (a request carrying
/// `X-Hook-Secret`). Handshakes are recorded apart from deliveries in every mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// 200 with the code back every way the SPEC allows (the default).
    EchoAll,
    /// 200 with the code only as the `X-Hook-Secret` response header, empty body.
    Header,
    /// 200 with the code only as `{"code": …}` in a JSON body.
    Json,
    /// 200 with the code only as the bare `text/plain` body.
    Body,
    /// This status, with the code back every way (a non-2xx must not verify).
    Status(u16),
    /// 200 with another code back every way.
    WrongCode,
    /// 200 `{"ok": true}` without the code: a receiver that ignores handshakes.
    Ignore,
    /// No answer at all until the sink is dropped: the sender must time out.
    Hang,
    /// 302 to this URL, without the code: following it is not allowed.
    Redirect(String),
}

struct SinkState {
    requests: Vec<Recorded>,
    /// Events carried by deliveries answered 2xx so far (kept as they arrive, so that
    /// a load generator can pace itself without re-reading every body).
    delivered: usize,
    handshakes: Vec<Recorded>,
    script: VecDeque<Reply>,
    default: Reply,
    handshake: Handshake,
}

/// A loopback HTTP receiver on its own port. It records every request, answers from
/// its script (then from its default, 200 unless changed) and echoes intent
/// verification handshakes (`X-Hook-Secret`) without recording them as deliveries.
pub struct Sink {
    server: Arc<tiny_http::Server>,
    state: Arc<Mutex<SinkState>>,
    stop: Arc<AtomicBool>,
    workers: Vec<thread::JoinHandle<()>>,
    pub port: u16,
}

impl Sink {
    /// A counter of delivered events (2xx-answered) that another thread can call.
    pub fn delivered_counter(&self) -> impl Fn() -> usize + Send + 'static {
        let state = Arc::clone(&self.state);
        move || state.lock().unwrap().delivered
    }

    pub fn start() -> Sink {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind sink");
        let port = server.server_addr().to_ip().expect("sink is on TCP").port();
        let server = Arc::new(server);
        let state = Arc::new(Mutex::new(SinkState {
            requests: Vec::new(),
            delivered: 0,
            handshakes: Vec::new(),
            script: VecDeque::new(),
            default: Reply::ok(),
            handshake: Handshake::EchoAll,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        // Several workers so that a slow answer to one hook never holds up another.
        let workers = (0..4)
            .map(|_| {
                let server = Arc::clone(&server);
                let state = Arc::clone(&state);
                let stop = Arc::clone(&stop);
                thread::spawn(move || sink_worker(&server, &state, &stop))
            })
            .collect();
        Sink {
            server,
            state,
            stop,
            workers,
            port,
        }
    }

    /// A target URL on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Queues replies, answered in order before the default takes over.
    pub fn script<R: Into<Reply>>(&self, replies: impl IntoIterator<Item = R>) {
        let mut st = self.state.lock().unwrap();
        st.script.extend(replies.into_iter().map(Into::into));
    }

    /// The reply once the script is used up.
    pub fn set_default(&self, reply: impl Into<Reply>) {
        self.state.lock().unwrap().default = reply.into();
    }

    /// Every delivery received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Asserts that every request received so far is signed with `secret`.
    #[track_caller]
    pub fn assert_all_signed(&self, secret: &str) {
        for req in self.requests() {
            req.assert_signed(secret);
        }
    }

    /// Deliveries received on one path.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Intent-verification requests received so far.
    pub fn handshakes(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().handshakes.clone()
    }

    /// How later handshakes are answered (`Handshake::EchoAll` until changed).
    pub fn set_handshake(&self, mode: Handshake) {
        self.state.lock().unwrap().handshake = mode;
    }

    /// The codes (`X-Hook-Secret`) of the handshakes received so far, in order.
    pub fn handshake_codes(&self) -> Vec<String> {
        self.handshakes()
            .iter()
            .map(|h| h.must_header("x-hook-secret").to_string())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Waits until `pred` holds of the recorded deliveries; returns them.
    pub fn wait_until(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let found = wait_until_or(WAIT, || {
            let reqs = self.requests();
            pred(&reqs).then_some(reqs)
        });
        found.unwrap_or_else(|| {
            let seen: Vec<String> = self.requests().iter().map(Recorded::summary).collect();
            panic!(
                "timed out after {WAIT:?} waiting for {what}; the sink received {} request(s):\n{}",
                seen.len(),
                seen.join("\n")
            )
        })
    }

    /// Waits for at least `n` deliveries (any answer); returns all of them.
    pub fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_until(&format!("{n} deliveries"), |r| r.len() >= n)
    }

    /// Waits until the successfully answered deliveries carry at least `n` events;
    /// returns those events in arrival order.
    pub fn wait_delivered(&self, n: usize) -> Vec<Value> {
        let reqs = self.wait_until(&format!("{n} delivered events"), |r| {
            delivered_events(r).len() >= n
        });
        delivered_events(&reqs)
    }
}

/// The events carried by the deliveries that were answered 2xx, in arrival order.
pub fn delivered_events(reqs: &[Recorded]) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.ok())
        .flat_map(Recorded::events)
        .collect()
}

/// The `field` of each event, as i64 (for `sequence`).
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| {
            e["sequence"]
                .as_i64()
                .unwrap_or_else(|| panic!("event without integer sequence: {e}"))
        })
        .collect()
}

/// The `event_id` of each event.
pub fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["event_id"]
                .as_str()
                .unwrap_or_else(|| panic!("event without event_id: {e}"))
                .to_string()
        })
        .collect()
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn sink_worker(server: &tiny_http::Server, state: &Mutex<SinkState>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let mut req = match server.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => break,
        };
        let at = Instant::now();
        let mut body = Vec::new();
        let _ = req.as_reader().read_to_end(&mut body);
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let mut rec = Recorded {
            method: req.method().as_str().to_string(),
            path: req.url().to_string(),
            headers,
            body,
            at,
            answered: 0,
        };

        // Intent verification: answered as this sink's `Handshake` mode says.
        if let Some(code) = rec.header("x-hook-secret").map(str::to_string) {
            let mode = state.lock().unwrap().handshake.clone();
            rec.answered = match mode {
                Handshake::Status(s) => s,
                Handshake::Redirect(_) => 302,
                Handshake::Hang => 0,
                _ => 200,
            };
            state.lock().unwrap().handshakes.push(rec);
            if mode == Handshake::Hang {
                // Held until the sink is dropped; the sender gives up first.
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
            let _ = req.respond(handshake_answer(&mode, &code));
            continue;
        }

        let reply = {
            let mut st = state.lock().unwrap();
            let reply = st.script.pop_front().unwrap_or_else(|| st.default.clone());
            rec.answered = reply.status;
            if rec.ok() {
                st.delivered += rec.events().len();
            }
            st.requests.push(rec);
            reply
        };
        if !reply.delay.is_zero() {
            thread::sleep(reply.delay);
        }
        let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
        for (k, v) in &reply.headers {
            resp.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
        }
        let _ = req.respond(resp);
    }
}

/// The sink's answer to a handshake carrying `code`, in `mode` (not `Hang`).
fn handshake_answer(mode: &Handshake, code: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k, v).unwrap();
    let every_way = |status: u16, code: &str| {
        tiny_http::Response::from_data(json!({ "code": code }).to_string())
            .with_status_code(status)
            .with_header(header("X-Hook-Secret", code))
            .with_header(header("Content-Type", "application/json"))
    };
    match mode {
        Handshake::EchoAll => every_way(200, code),
        Handshake::Status(s) => every_way(*s, code),
        Handshake::WrongCode => every_way(200, &format!("{code}-not")),
        Handshake::Header => tiny_http::Response::from_data(Vec::new())
            .with_status_code(200)
            .with_header(header("X-Hook-Secret", code)),
        Handshake::Json => tiny_http::Response::from_data(json!({ "code": code }).to_string())
            .with_status_code(200)
            .with_header(header("Content-Type", "application/json")),
        Handshake::Body => tiny_http::Response::from_data(code.as_bytes().to_vec())
            .with_status_code(200)
            .with_header(header("Content-Type", "text/plain")),
        Handshake::Ignore => tiny_http::Response::from_data(br#"{"ok": true}"#.to_vec())
            .with_status_code(200)
            .with_header(header("Content-Type", "application/json")),
        Handshake::Redirect(to) => tiny_http::Response::from_data(Vec::new())
            .with_status_code(302)
            .with_header(header("Location", to)),
        Handshake::Hang => unreachable!("a hanging handshake is never answered"),
    }
}
