//! The `hookd serve` under test: a child process of this same executable, on a fresh
//! database in its own directory, listening on a loopback port it picks itself; and
//! what the kernel says about it (`/proc/<pid>`: peak RSS, CPU time).
//!
//! The child is stopped with SIGKILL when its database is thrown away: a clean shutdown
//! would only add a WAL checkpoint nobody waits for. A case that goes on with the
//! database (the `outbox` scenario fills it while no server runs, then starts another
//! on it) stops it cleanly instead, with SIGTERM ([`Server::shutdown`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::Conn;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on every Linux port that
/// hookd builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// A running `hookd serve`.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// From spawning the process to its `listening on` line.
    pub startup: Duration,
    /// The admin token it was started with.
    pub token: String,
    /// Its directory: the database `b.db`, its key file and its log.
    dir: PathBuf,
    log: PathBuf,
}

/// What the kernel reports about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Resident set now, MiB.
    pub rss_mb: f64,
    /// Peak resident set (VmHWM), MiB.
    pub peak_rss_mb: f64,
    /// User + system CPU time so far, seconds.
    pub cpu_s: f64,
    pub threads: u64,
}

impl Server {
    /// Starts `hookd serve` on `dir/b.db` (created when missing) with the flags the
    /// benchmark needs, then `extra` (scenario flags) and `user` (`--serve-arg`s). Its
    /// stderr goes to the end of `dir/hookd.log`.
    pub fn start(dir: &Path, extra: &[String], user: &[String]) -> Result<Server, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find hookd itself: {e}"))?;
        let log = dir.join("hookd.log");
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut token_bytes = [0u8; 16];
        crate::ids::random_bytes(&mut token_bytes);
        let token = format!(
            "bench_{}",
            token_bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut command = Command::new(exe);
        // The child must run what the benchmark says, not what the shell happens to
        // hold: every HOOKD_* variable and proxy setting is dropped; flags are explicit.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().into_owned();
            if name.starts_with("HOOKD_") || name.to_ascii_lowercase().ends_with("_proxy") {
                command.env_remove(&name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            // Warnings only: info lines per hook change would be part of what is timed.
            command.env("RUST_LOG", "warn");
        }
        command
            .env("HOOKD_ADMIN_TOKEN", &token)
            .arg("serve")
            .arg("--db")
            .arg(dir.join("b.db"))
            .args(["--listen", "127.0.0.1:0", "--allow-private-targets"])
            .args(["--rate-limit", "0"])
            .args(extra)
            .args(user)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start hookd serve: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout);
        let mut first = String::new();
        let read = lines.read_line(&mut first);
        let startup = spawned.elapsed();
        let addr = first
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "hookd serve did not start ({}); its log ends with:\n{}",
                match read {
                    Ok(_) if first.is_empty() => "no output".to_string(),
                    Ok(_) => format!("it printed {first:?}"),
                    Err(e) => e.to_string(),
                },
                tail(&log)
            ));
        };
        // Nothing else is printed, but a full pipe must never block the child.
        std::thread::Builder::new()
            .name("bench-child-stdout".into())
            .spawn(move || {
                let _ = std::io::copy(&mut lines, &mut std::io::sink());
            })
            .map_err(|e| e.to_string())?;
        Ok(Server {
            child,
            addr,
            startup,
            token,
            dir: dir.to_path_buf(),
            log,
        })
    }

    /// Its directory (pass it to [`Server::start`] to start again on the same database).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its database file.
    pub fn db(&self) -> PathBuf {
        self.dir.join("b.db")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> ProcStats {
        proc_stats(&format!("/proc/{}", self.pid()))
    }

    /// A fresh keep-alive connection to its API.
    pub fn conn(&self) -> Result<Conn, String> {
        Conn::connect(self.addr).map_err(|e| format!("cannot connect to hookd: {e}"))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Reads its final figures and kills it.
    pub fn stop(mut self) -> ProcStats {
        let stats = self.stats();
        let _ = self.child.kill();
        let _ = self.child.wait();
        stats
    }

    /// Stops it as an operator would: SIGTERM, and a clean shutdown (work in flight
    /// finished, the WAL checkpointed, the lock file released) within `limit`. An error
    /// when it does not exit 0 in time (it is killed then).
    pub fn shutdown(mut self, limit: Duration) -> Result<(), String> {
        let pid = self.pid().to_string();
        // std can only send SIGKILL; `kill(1)` is on every machine hookd runs on.
        let sent = Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -s TERM {pid} failed: {sent}"));
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "hookd exited with {status} after SIGTERM; its log ends with:\n{}",
                        self.log_tail()
                    ))
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => {
                    return Err(format!(
                        "hookd still runs {} s after SIGTERM; its log ends with:\n{}",
                        limit.as_secs(),
                        self.log_tail()
                    ))
                }
                Err(e) => return Err(format!("waiting for hookd to exit: {e}")),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The benchmark process itself (the generator and the receiver).
pub fn own_stats() -> ProcStats {
    proc_stats("/proc/self")
}

/// The calling thread's CPU seconds (user + system), from its CPU clock: to the
/// nanosecond, where `/proc`'s counts are in ticks of 10 ms, which a short measurement
/// (the smoke test's bounds) can fall between.
pub fn thread_cpu_s() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn proc_stats(dir: &str) -> ProcStats {
    let mut out = ProcStats::default();
    if let Ok(status) = std::fs::read_to_string(format!("{dir}/status")) {
        for line in status.lines() {
            let value = |l: &str| -> f64 {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            if line.starts_with("VmHWM:") {
                out.peak_rss_mb = value(line) / 1024.0;
            } else if line.starts_with("VmRSS:") {
                out.rss_mb = value(line) / 1024.0;
            } else if line.starts_with("Threads:") {
                out.threads = value(line) as u64;
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string(format!("{dir}/stat")) {
        // Fields after the parenthesised command name: state is the first, utime the
        // 12th and stime the 13th (fields 14 and 15 of proc(5)).
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| -> f64 {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            out.cpu_s = (ticks(11) + ticks(12)) / TICKS_PER_SECOND;
        }
    }
    out
}

fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_proc_figures() {
        let s = own_stats();
        assert!(s.peak_rss_mb > 0.0 && s.rss_mb > 0.0);
        assert!(s.threads >= 1);
    }
}
