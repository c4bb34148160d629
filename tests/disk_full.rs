//! A full disk (issue 4, item 9): the database lives on a small tmpfs that the test
//! fills with a filler file. Publishing must then answer 503 with `Retry-After` (the
//! event is not acknowledged), the fault is logged once per episode rather than once per
//! request, nothing acknowledged before is lost, and once the filler is deleted hookd
//! accepts again by itself, without a restart, and delivers everything it accepted.
//!
//! Needs root (`mount -t tmpfs`); when the mount is refused the test says so and passes
//! without checking anything.

mod common;
mod faultkit;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_until_or, Sink, TempDir, WAIT};
use faultkit::Server;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Writes to `path` until the filesystem says it is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Fill the last partial block too.
    for _ in 0..64 {
        if f.write(&chunk[..512]).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    written
}

/// Publish outcomes by tag (the events' `resource_id`).
#[derive(Default)]
struct Outcomes {
    accepted: Vec<String>,
    refused: Vec<String>,
}

impl Outcomes {
    /// Publishes one event of about 4 KB; records and returns the status (202 or 503).
    fn publish(&mut self, server: &Server, tag: String) -> u16 {
        let a = server.post(
            "/v1/events",
            &json!({"type": "full.e", "resource_id": tag, "data": {"d": "d".repeat(4000)}}),
        );
        match a.status {
            202 => self.accepted.push(tag),
            503 => {
                assert!(
                    a.header("retry-after")
                        .is_some_and(|v| v.parse::<u64>().is_ok()),
                    "503 without a Retry-After in seconds: {:?}",
                    a.headers
                );
                self.refused.push(tag);
            }
            _ => panic!("publish with the disk full or freed: {a}"),
        }
        a.status
    }
}

#[test]
fn a_full_disk_answers_503_loses_nothing_and_recovers_by_itself() {
    let dir = TempDir::new();
    let fs = match Tmpfs::mount(&dir.path.join("fs"), "16m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the disk-full test: {e}");
            return;
        }
    };
    let sink = Sink::start();
    // Refused until the disk has room again: what was accepted waits in the outbox.
    sink.set_default(500);
    let schedule = vec!["500ms"; 60].join(",");
    let server = Server::on(&fs.path.join("hookd.db"))
        .set("--retry-schedule", &schedule)
        .start();
    let (hook, _) = server.hook(json!({"target_url": sink.url("/full"), "event": "full.*"}));

    let mut log = Outcomes::default();
    for i in 0..20 {
        assert_eq!(log.publish(&server, format!("before-{i}")), 202);
    }
    sink.wait_for(1);

    let filler = fs.path.join("filler");
    let filled = fill(&filler);
    eprintln!("filler: {filled} bytes");
    let mut i = 0;
    let first_503 = wait_until_or(WAIT, || {
        i += 1;
        (log.publish(&server, format!("full-{i}")) == 503).then_some(())
    });
    assert!(
        first_503.is_some(),
        "no 503 within {WAIT:?} of filling the disk ({} publishes accepted meanwhile)",
        log.accepted.len() - 20
    );
    for _ in 0..5 {
        i += 1;
        log.publish(&server, format!("full-{i}"));
    }
    let failing_logged = server.stderr().matches("commits are failing").count();
    eprintln!(
        "on the full disk: {} publishes refused, {} accepted; the fault was logged {failing_logged} time(s)",
        log.refused.len(),
        log.accepted.len() - 20
    );
    assert!(failing_logged >= 1, "the storage fault was not logged");
    assert!(
        failing_logged < log.refused.len(),
        "the fault was logged {failing_logged} times for {} refusals: once per request, not \
         once per episode",
        log.refused.len()
    );

    // Room again: hookd recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut j = 0;
    let recovered = wait_until_or(WAIT, || {
        j += 1;
        (log.publish(&server, format!("after-{j}")) == 202).then_some(())
    });
    assert!(
        recovered.is_some(),
        "publishing still fails {WAIT:?} after the disk has room again"
    );
    eprintln!(
        "accepting again {:?} after the filler was deleted",
        freed.elapsed()
    );
    for k in 0..5 {
        assert_eq!(log.publish(&server, format!("later-{k}")), 202);
    }
    server.wait_log("commits succeed again", WAIT);

    // Everything accepted is delivered; nothing refused is.
    sink.set_default(200);
    let want: BTreeSet<String> = log.accepted.iter().cloned().collect();
    let got = wait_until_or(Duration::from_secs(20), || {
        let got: BTreeSet<String> = sink
            .requests()
            .iter()
            .filter(|r| r.ok())
            .flat_map(|r| r.events())
            .map(|e| e["resource_id"].as_str().unwrap().to_string())
            .collect();
        want.is_subset(&got).then_some(got)
    })
    .unwrap_or_else(|| {
        panic!(
            "accepted events were not all delivered within 20 s after the disk recovered; \
             {} open deliveries",
            server.open_deliveries(&hook)
        )
    });
    let phantoms: Vec<&String> = log.refused.iter().filter(|t| got.contains(*t)).collect();
    assert!(
        phantoms.is_empty(),
        "events answered 503 were delivered anyway: {phantoms:?}"
    );
}
