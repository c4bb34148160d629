//! The operator dashboard in a real browser: a live hookd with a failing receiver, the
//! dashboard driven by Debian's Chromium through playwright-core (tests/browser/):
//! sign in, see the dead delivery with its hostile response snippet rendered as text,
//! let the receiver recover, click Retry, see it delivered. A screenshot is left in
//! `target/browser-artifacts/dashboard.png`.
//!
//! Needs `node`/`npm` and `/usr/bin/chromium` (`apt-get install -y chromium`); the
//! driver's npm dependencies are installed with `npm ci` when missing.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drain_output, wait_until_or, Hookd, Sink};
use serde_json::json;

/// The answer of the failing receiver: markup that would run if the page used it as HTML.
const XSS_BODY: &str = r#"<script>window.__xss=1</script><img src=x onerror="window.__xss=2">"#;

/// Longest the driver may take from start to finish (browser launch included).
const DRIVER_DEADLINE: Duration = Duration::from_secs(60);

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn dashboard_shows_dead_delivery_escapes_snippet_and_retries() {
    let chromium = chromium();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    install_driver(&browser_dir);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create target/browser-artifacts");
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    // A receiver that fails with a hostile body; two quick retries, then dead.
    let sink = Sink::start();
    sink.set_default(failing_reply());
    let hookd = Hookd::options().schedule("50ms,50ms").start();
    let target = sink.url("/receiver");
    let hook = hookd.hook(&target, "order.*");
    let event = hookd.publish("order.paid", "o-1", json!({"total": 12}));
    let dead = hookd.wait_delivery(&hook.id, &event, "dead");
    let delivery_id = dead["id"].as_str().expect("delivery id").to_string();
    let attempts = dead["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.last().unwrap()["response_snippet"],
        XSS_BODY,
        "the log keeps the receiver's answer as its snippet: {dead}"
    );

    let mut driver = Driver::start(
        &browser_dir,
        &[
            ("HOOKD_URL", hookd.url("/")),
            ("HOOKD_TOKEN", hookd.admin.clone()),
            ("HOOK_ID", hook.id.clone()),
            ("HOOK_TARGET", target.clone()),
            ("DELIVERY_ID", delivery_id.clone()),
            ("XSS_SNIPPET", XSS_BODY.to_string()),
            ("SCREENSHOT", screenshot.to_string_lossy().into_owned()),
            ("CHROMIUM", chromium.to_string_lossy().into_owned()),
        ],
    );
    driver.expect_line("READY");
    // The receiver recovers before the driver clicks Retry.
    sink.set_default(common::Reply::ok());
    driver.send("GO");
    driver.expect_line("PASS");
    driver.expect_success();

    // What the page showed is what happened.
    let delivered = hookd.wait_delivery(&hook.id, &event, "delivered");
    assert_eq!(delivered["id"], delivery_id.as_str());
    assert!(
        sink.requests().iter().any(|r| r.ok()),
        "the receiver never answered 200 to the retried delivery"
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

fn failing_reply() -> common::Reply {
    common::Reply {
        status: 500,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: XSS_BODY.as_bytes().to_vec(),
        delay: Duration::ZERO,
    }
}

/// Debian's Chromium, installed with apt-get (as root) when missing.
fn chromium() -> PathBuf {
    let path = PathBuf::from(CHROMIUM);
    if path.is_file() {
        return path;
    }
    eprintln!("{CHROMIUM} is missing; trying `apt-get install -y chromium`");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-q", "chromium"]) {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", "chromium"]);
    }
    assert!(
        path.is_file(),
        "the browser test needs Debian's Chromium at {CHROMIUM} and could not install it; \
         run `apt-get update && apt-get install -y chromium` (as root) and try again"
    );
    path
}

/// `npm ci` in tests/browser when playwright-core is not installed there yet.
fn install_driver(dir: &Path) {
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node_ok,
        "the browser test needs Node.js (`node` and `npm` on PATH)"
    );
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run npm (is it on PATH?)");
    assert!(
        out.status.success(),
        "`npm ci` in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Node driver (tests/browser/dashboard.mjs): lines on stdout, commands on stdin.
/// Killed on drop, so a failing test leaves no browser behind.
struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    deadline: Instant,
}

impl Driver {
    fn start(dir: &Path, env: &[(&str, String)]) -> Driver {
        let mut cmd = Command::new("node");
        cmd.arg("dashboard.mjs").current_dir(dir);
        // The browser talks to 127.0.0.1 only: no proxy may get in between.
        for var in common::PROXY_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/browser/dashboard.mjs");
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = drain_output(&mut child, &stderr);
        Driver {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr,
            deadline: Instant::now() + DRIVER_DEADLINE,
        }
    }

    /// Waits (within the driver's deadline) for the line `want` on its stdout.
    fn expect_line(&mut self, want: &str) {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("driver: {line}");
                    let done = line == want;
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail(&format!("timed out waiting for the driver to say {want}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let note = self.exit_note();
                    self.fail(&format!("the driver ended before saying {want}{note}"))
                }
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("driver stdin");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|_| stdin.flush()) {
            self.fail(&format!("could not write {line:?} to the driver: {e}"));
        }
    }

    /// Waits for the driver to exit 0.
    fn expect_success(&mut self) {
        self.stdin = None;
        let left = self.deadline.saturating_duration_since(Instant::now());
        let status = wait_until_or(left, || self.child.try_wait().ok().flatten());
        match status {
            Some(s) if s.success() => {}
            Some(s) => self.fail(&format!("the driver exited with {s}")),
            None => self.fail("the driver did not exit"),
        }
    }

    fn exit_note(&mut self) -> String {
        let status = wait_until_or(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        status.map_or(String::new(), |s| format!(" (it exited with {s})"))
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the stderr reader a moment to take the last bytes of a dead pipe.
        let _ = wait_until_or(Duration::from_secs(2), || {
            Arc::strong_count(&self.stderr).eq(&1).then_some(())
        });
        panic!(
            "{what}\ndriver stdout:\n{}\ndriver stderr:\n{}\n(a failure screenshot may be in \
             target/browser-artifacts/dashboard-failure.png)",
            self.seen.join("\n"),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
