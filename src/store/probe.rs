//! Measurements of bare SQLite on this machine, for `hookd bench`'s bounds (issue 5
//! asks, where a target is out of reach, for the figure of the bound itself). Each runs
//! on a scratch file of its own in a directory it is given, never on hookd's database,
//! and removes the file afterwards. They are here because only `store` touches
//! rusqlite.
//!
//! - [`durable_commits`]: how many durable commits one SQLite file on this disk takes
//!   per second, each of `rows` rows and nothing else (no index, no outbox).
//! - [`outcome_cpu_us`]: the CPU of the least a durable delivery log records per
//!   attempt.
//! - [`BareWriter`]: hookd's writer with none of hookd's work, for the bound its design
//!   puts on single publishes.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rusqlite::{params, Connection};

use super::reply::{self, ReplySender};

/// Durable commits per second of `rows` rows of `row_bytes` each, for `length`.
pub fn durable_commits(
    dir: &Path,
    rows: usize,
    row_bytes: usize,
    length: Duration,
) -> Result<f64, String> {
    on_scratch(dir, "commits.db", |conn| {
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")?;
        let body = "x".repeat(row_bytes);
        let start = Instant::now();
        let mut commits = 0u64;
        while start.elapsed() < length {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO t (body) VALUES (?1)")?;
                for _ in 0..rows {
                    insert.execute([&body])?;
                }
            }
            tx.commit()?;
            commits += 1;
        }
        Ok(commits as f64 / start.elapsed().as_secs_f64())
    })
}

/// CPU per outcome, in microseconds, of the least a durable delivery log records for
/// each attempt: the delivery marked done and an attempt row written, 64 outcomes per
/// commit, on a file holding `hooks × 1000` pending deliveries, for at most `length`.
/// `cpu_s` is the calling thread's CPU clock (seconds), read around the outcomes only,
/// so neither the set-up nor the fsync's wait is in the figure.
pub fn outcome_cpu_us(
    dir: &Path,
    hooks: usize,
    length: Duration,
    cpu_s: impl Fn() -> f64,
) -> Result<f64, String> {
    const PER_HOOK: usize = 1000;
    const GROUP: usize = 64;
    let hooks = hooks.max(1);
    on_scratch(dir, "outcomes.db", |conn| {
        conn.execute_batch(
            "CREATE TABLE deliveries (hook_id TEXT NOT NULL, seq INTEGER NOT NULL,
                 event_id TEXT NOT NULL, state INTEGER NOT NULL, PRIMARY KEY (hook_id, seq))
                 WITHOUT ROWID;
             CREATE TABLE attempts (id INTEGER PRIMARY KEY, hook_id TEXT NOT NULL,
                 seq INTEGER NOT NULL, status_code INTEGER, duration_us INTEGER NOT NULL,
                 at INTEGER NOT NULL);",
        )?;
        let hook_ids: Vec<String> = (0..hooks).map(|h| format!("hook_{h:024}")).collect();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare("INSERT INTO deliveries VALUES (?1, ?2, ?3, 0)")?;
            for (h, hook) in hook_ids.iter().enumerate() {
                for seq in 0..PER_HOOK {
                    insert.execute(params![hook, seq as i64, format!("evt_{h:013}{seq:013}")])?;
                }
            }
        }
        tx.commit()?;
        let (start, cpu_start) = (Instant::now(), cpu_s());
        let mut outcomes = 0usize;
        // Round-robin over the hooks, each hook's deliveries in order, as dispatchers
        // finish them.
        while start.elapsed() < length && outcomes < hooks * PER_HOOK {
            let tx = conn.transaction()?;
            {
                let mut done = tx.prepare_cached(
                    "UPDATE deliveries SET state = 1 WHERE hook_id = ?1 AND seq = ?2",
                )?;
                let mut attempt = tx.prepare_cached(
                    "INSERT INTO attempts (hook_id, seq, status_code, duration_us, at)
                     VALUES (?1, ?2, 204, 150, ?3)",
                )?;
                for _ in 0..GROUP.min(hooks * PER_HOOK - outcomes) {
                    let (hook, seq) = (&hook_ids[outcomes % hooks], (outcomes / hooks) as i64);
                    done.execute(params![hook, seq])?;
                    attempt.execute(params![hook, seq, outcomes as i64])?;
                    outcomes += 1;
                }
            }
            tx.commit()?;
        }
        Ok((cpu_s() - cpu_start) * 1e6 / outcomes.max(1) as f64)
    })
}

/// The part of a publish hookd's design requires, without hookd's work: one thread
/// that takes every body waiting (up to the writer's group size), inserts each as a row
/// of a bare table (no index, no parsing, no ids, no fan-out), commits them at once
/// (durable), and only then answers each caller, through the writer's own one-shot
/// replies and at its priority. Served by hookd's HTTP server (`api::Http::bare`), it
/// is the single-publish rate this design could reach if hookd's own work cost nothing.
pub struct BareWriter {
    queue: Option<Sender<(Vec<u8>, ReplySender<bool>)>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl BareWriter {
    /// Starts the thread on a scratch file in `dir`, removed when it stops.
    pub fn start(dir: &Path) -> Result<BareWriter, String> {
        let (queue, requests) = crossbeam_channel::bounded::<(Vec<u8>, ReplySender<bool>)>(8192);
        let dir: PathBuf = dir.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("bare-writer".into())
            .spawn(move || {
                super::writer::raise_priority();
                on_scratch(&dir, "bare-writer.db", |conn| {
                    // As hookd's writer: no checkpoint inside a commit.
                    conn.pragma_update(
                        None,
                        "wal_autocheckpoint",
                        super::writer::CHECKPOINT_PAGES,
                    )?;
                    conn.execute_batch(
                        "CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
                    )?;
                    while let Ok(first) = requests.recv() {
                        let mut group = vec![first];
                        super::writer::take_waiting(&requests, &mut group);
                        let tx = conn.transaction()?;
                        {
                            let mut insert =
                                tx.prepare_cached("INSERT INTO t (body) VALUES (?1)")?;
                            for (body, _) in &group {
                                insert.execute([body])?;
                            }
                        }
                        tx.commit()?;
                        reply::send_all(group.into_iter().map(|(_, answer)| (answer, true)));
                    }
                    Ok(())
                })
            })
            .map_err(|e| format!("starting a bare writer: {e}"))?;
        Ok(BareWriter {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Commits `body` as a row; returns once it is on disk, false if it could not be.
    pub fn write(&self, body: Vec<u8>) -> bool {
        let (answer, reply) = reply::oneshot();
        match &self.queue {
            Some(queue) if queue.send((body, answer)).is_ok() => reply.recv().unwrap_or(false),
            _ => false,
        }
    }
}

impl Drop for BareWriter {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("bare writer: {e}"),
                Err(_) => log::warn!("bare writer: panicked"),
            }
        }
    }
}

/// Runs `measure` on a new file `name` in `dir`, opened as hookd opens its own (WAL,
/// `synchronous = FULL`), and removes the file and its WAL afterwards.
fn on_scratch<T>(
    dir: &Path,
    name: &str,
    measure: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> Result<T, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    let result = Connection::open(&path).and_then(|mut conn| {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        measure(&mut conn)
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result.map_err(|e| format!("measuring on {}: {e}", path.display()))
}
