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

use std::path::Path;
use std::time::{Duration, Instant};

/// Durable commits per second of `rows` rows of `row_bytes` each, for `length`, on a
/// new SQLite file in `dir` opened as hookd opens its own (WAL, `synchronous = FULL`).
/// The file is removed afterwards.
pub fn durable_commits(
    dir: &Path,
    rows: usize,
    row_bytes: usize,
    length: Duration,
) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("commits.db");
    let result = commit_loop(&path, rows, row_bytes, length);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result.map_err(|e| format!("the durable-commit bound on {}: {e}", path.display()))
}

fn commit_loop(
    path: &Path,
    rows: usize,
    row_bytes: usize,
    length: Duration,
) -> rusqlite::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
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
}

/// CPU per outcome, in microseconds, of the least a durable delivery log records for
/// each attempt: the delivery marked done and an attempt row written, 64 outcomes per
/// commit, on a new SQLite file in `dir` holding `hooks × 1000` pending deliveries.
/// Counted on this thread's CPU clock, so the fsync's wait is not in it. The file is
/// removed afterwards.
pub fn outcome_cpu_us(dir: &Path, hooks: usize, length: Duration) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("outcomes.db");
    let result = outcome_loop(&path, hooks.max(1), length);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result.map_err(|e| format!("the outcome bound on {}: {e}", path.display()))
}

fn outcome_loop(path: &Path, hooks: usize, length: Duration) -> Result<f64, String> {
    const PER_HOOK: usize = 1000;
    const GROUP: usize = 64;
    let sql = |e: rusqlite::Error| e.to_string();
    let mut conn = rusqlite::Connection::open(path).map_err(sql)?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.execute_batch(
        "CREATE TABLE deliveries (hook_id TEXT NOT NULL, seq INTEGER NOT NULL,
             event_id TEXT NOT NULL, state INTEGER NOT NULL, PRIMARY KEY (hook_id, seq))
             WITHOUT ROWID;
         CREATE TABLE attempts (id INTEGER PRIMARY KEY, hook_id TEXT NOT NULL,
             seq INTEGER NOT NULL, status_code INTEGER, duration_us INTEGER NOT NULL,
             at INTEGER NOT NULL);",
    )
    .map_err(sql)?;
    let hook = |h: usize| format!("hook_{h:024}");
    {
        let tx = conn.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare("INSERT INTO deliveries VALUES (?1, ?2, ?3, 0)")
                .map_err(sql)?;
            for h in 0..hooks {
                for seq in 0..PER_HOOK {
                    let event = format!("evt_{h:013}{seq:013}");
                    insert
                        .execute(rusqlite::params![hook(h), seq as i64, event])
                        .map_err(sql)?;
                }
            }
        }
        tx.commit().map_err(sql)?;
    }
    let hooks_ids: Vec<String> = (0..hooks).map(hook).collect();
    let (start, cpu_start) = (Instant::now(), thread_cpu_s()?);
    let mut outcomes = 0usize;
    // Round-robin over the hooks, each hook's deliveries in order, as dispatchers
    // finish them.
    while start.elapsed() < length && outcomes < hooks * PER_HOOK {
        let tx = conn.transaction().map_err(sql)?;
        {
            let mut done = tx
                .prepare_cached("UPDATE deliveries SET state = 1 WHERE hook_id = ?1 AND seq = ?2")
                .map_err(sql)?;
            let mut attempt = tx
                .prepare_cached(
                    "INSERT INTO attempts (hook_id, seq, status_code, duration_us, at)
                     VALUES (?1, ?2, 204, 150, ?3)",
                )
                .map_err(sql)?;
            for _ in 0..GROUP.min(hooks * PER_HOOK - outcomes) {
                let (h, seq) = (outcomes % hooks, (outcomes / hooks) as i64);
                done.execute(rusqlite::params![hooks_ids[h], seq])
                    .map_err(sql)?;
                attempt
                    .execute(rusqlite::params![hooks_ids[h], seq, outcomes as i64])
                    .map_err(sql)?;
                outcomes += 1;
            }
        }
        tx.commit().map_err(sql)?;
    }
    let cpu = thread_cpu_s()? - cpu_start;
    Ok(cpu * 1e6 / outcomes.max(1) as f64)
}

/// This thread's CPU seconds (user + system) from `/proc/thread-self/stat`.
fn thread_cpu_s() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
    // The fields after the parenthesised name: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |n: usize| -> Result<f64, String> {
        rest.split_whitespace()
            .nth(n)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "unreadable /proc/thread-self/stat".to_string())
    };
    Ok((field(11)? + field(12)?) / 100.0)
}
