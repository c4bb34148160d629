//! The operator CLI (issue 6) run as the real binary against the database file of a
//! live `hookd serve`: what the CLI writes, the running server acts on (keys at once,
//! queued deliveries when it re-reads its queue, every 5 s), and what the server did,
//! the CLI shows, as tables by default and as JSON with `--json`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How often the server in these tests re-reads which hooks have queued rows: what the
/// CLI queues from its own process reaches the server that way.
const RESYNC: &str = "1s";
/// A delivery queued by the CLI must arrive within this.
const REREAD: Duration = Duration::from_secs(6);

/// One run of `hookd ARGS...` to its end.
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(
            self.code,
            Some(0),
            "hookd {:?} failed\nstdout: {}\nstderr: {}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "hookd {:?} --json printed no JSON ({e}):\n{}",
                self.args, self.stdout
            )
        })
    }

    /// The rows of a human table: the header's column names, then each row's cells.
    #[track_caller]
    fn table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut lines = self.stdout.lines().filter(|l| !l.trim().is_empty());
        let header = lines
            .next()
            .unwrap_or_else(|| panic!("hookd {:?} printed no table", self.args));
        let columns: Vec<String> = header.split_whitespace().map(str::to_string).collect();
        assert!(
            !columns.is_empty()
                && columns
                    .iter()
                    .all(|c| c.chars().all(|ch| !ch.is_lowercase())),
            "hookd {:?}: the first line is not a header of column names: {header:?}",
            self.args
        );
        let rows = lines
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect();
        (columns, rows)
    }

    /// `table`, checked to start with the column `want[0]` and to hold every other
    /// column in `want`.
    #[track_caller]
    fn table_with(&self, want: &[&str]) -> (Vec<String>, Vec<Vec<String>>) {
        let (columns, rows) = self.table();
        assert_eq!(
            columns.first().map(String::as_str),
            want.first().copied(),
            "{}",
            self.stdout
        );
        for column in want {
            assert!(
                columns.iter().any(|c| c == column),
                "no {column} column: {}",
                self.stdout
            );
        }
        (columns, rows)
    }
}

/// Runs the binary with a clean environment (no `HOOKD_*` from the developer's shell).
fn hookd_cli<S: AsRef<str>>(args: &[S]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let mut cmd = Command::new(HOOKD_BIN);
    cmd.args(&args);
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKD_") {
            cmd.env_remove(k);
        }
    }
    // The outputs are small; the pipes do not fill before the process ends.
    let out = output_within(cmd.env("RUST_LOG", "warn"), WAIT)
        .unwrap_or_else(|_| panic!("hookd {args:?} still ran after {WAIT:?}"));
    let out = Exited::from(out);
    Run {
        args,
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// `hookd ARGS... --db <the live server's database> [--json]`, expected to succeed.
#[track_caller]
fn cli(hookd: &Hookd, args: &[&str], json: bool) -> Run {
    let db = hookd.db_path();
    let mut all: Vec<&str> = args.to_vec();
    all.push("--db");
    all.push(db.to_str().unwrap());
    if json {
        all.push("--json");
    }
    hookd_cli(&all).ok()
}

fn ids_in(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A delivery of `hook` arrives 2xx at `sink` carrying `event`; returns its webhook-id.
fn wait_arrival(sink: &Sink, event: &str, within: Duration) -> String {
    let found = wait_until_or(within, || {
        sink.requests()
            .into_iter()
            .find(|r| r.ok() && r.events().iter().any(|e| e["event_id"] == event))
    });
    let req = found.unwrap_or_else(|| {
        let seen: Vec<String> = sink.requests().iter().map(Recorded::summary).collect();
        panic!(
            "event {event} did not arrive within {within:?}; the sink saw:\n{}",
            seen.join("\n")
        )
    });
    req.webhook_id().to_string()
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["hooks"],
        &["hooks", "list"],
        &["hooks", "show"],
        &["hooks", "activate"],
        &["hooks", "delete"],
        &["deliveries"],
        &["deliveries", "list"],
        &["deliveries", "retry"],
        &["replay"],
        &["stats"],
        &["backup"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = hookd_cli(&args).ok();
        assert!(
            run.stdout.contains("Usage: hookd"),
            "hookd {args:?}: no usage line:\n{}",
            run.stdout
        );
        let leaf =
            command.len() == 2 || matches!(command.first(), Some(&("replay" | "stats" | "backup")));
        if leaf {
            for flag in ["--db", "--json"] {
                assert!(
                    run.stdout.contains(flag),
                    "hookd {args:?} does not document {flag}:\n{}",
                    run.stdout
                );
            }
        }
    }
    let run = hookd_cli(&["deliveries", "list", "--help"]).ok();
    for flag in ["--status", "--hook"] {
        assert!(run.stdout.contains(flag), "{flag}:\n{}", run.stdout);
    }
    let run = hookd_cli(&["replay", "--help"]).ok();
    for flag in ["--hook", "--since"] {
        assert!(run.stdout.contains(flag), "{flag}:\n{}", run.stdout);
    }
}

#[test]
fn keys_made_by_the_cli_work_on_the_live_server_until_revoked() {
    // One handler context: the publish after the revocation is served by the context
    // that cached the key at the first one, so the writer's check is what refuses it.
    let hookd = Hookd::options().arg("--handlers").arg("1").start();
    let created = cli(&hookd, &["keys", "create", "--role", "publisher"], true).json();
    // One key: an object, or an array holding one.
    let key = match created {
        Value::Array(mut a) if a.len() == 1 => a.remove(0),
        v => v,
    };
    let id = key["id"].as_str().expect("key id").to_string();
    let token = key["token"].as_str().expect("key token").to_string();
    assert!(id.starts_with("key_"), "{key}");
    assert_eq!(key["role"], "publisher");
    let r = hookd.post(&token, "/v1/events", &json!({"type": "cli.made"}));
    assert_eq!(
        r.status, 202,
        "a key the CLI created does not authenticate: {r}"
    );

    let sub = cli(
        &hookd,
        &["keys", "create", "--role", "subscriber", "--tenant", "acme"],
        false,
    );
    let (columns, rows) = sub.table();
    let token_column = columns
        .iter()
        .position(|c| c == "TOKEN")
        .unwrap_or_else(|| panic!("no TOKEN column: {}", sub.stdout));
    assert_eq!(rows.len(), 1, "{}", sub.stdout);
    let sub_token = rows[0][token_column].clone();
    hookd.get(&sub_token, "/v1/hooks").expect(200);

    let listed = cli(&hookd, &["keys", "list"], true).json();
    assert!(ids_in(&listed).contains(&id), "{listed}");
    assert!(
        !listed.to_string().contains(&token),
        "keys list shows a token"
    );
    let (_, rows) = cli(&hookd, &["keys", "list"], false).table_with(&["ID"]);
    assert!(rows.iter().any(|r| r[0] == id), "{rows:?}");
    // The API lists the key too: both read the same database.
    let api = hookd.get(&hookd.admin, "/v1/keys?limit=500").expect(200);
    assert!(api.to_string().contains(&id), "{api}");

    cli(&hookd, &["keys", "revoke", &id], false);
    hookd
        .post(&token, "/v1/events", &json!({"type": "cli.revoked"}))
        .expect_error(401, "unauthorized");
    let stored = hookd.event_ids("cli.revoked");
    assert!(
        stored.is_empty(),
        "a refused publish was stored: {stored:?}"
    );
    let listed = cli(&hookd, &["keys", "list"], true).json();
    assert!(!ids_in(&listed).contains(&id), "revoked key still listed");

    let bad = hookd_cli(&[
        "keys",
        "revoke",
        "key_nope",
        "--db",
        hookd.db_path().to_str().unwrap(),
    ]);
    assert_ne!(bad.code, Some(0), "revoking an unknown key succeeded");
    assert!(!bad.stderr.is_empty(), "no error message");
}

#[test]
fn dead_deliveries_are_listed_retried_and_replayed_and_inactive_hooks_resume() {
    // Two attempts per delivery; three failed attempts in a row disable a hook.
    let hookd = Hookd::options()
        .schedule("100ms")
        .disable_after(3)
        .arg("--resync-interval")
        .arg(RESYNC)
        .start();
    let retry_sink = Sink::start();
    let replay_sink = Sink::start();
    let held_sink = Sink::start();
    for s in [&retry_sink, &replay_sink, &held_sink] {
        s.set_default(500);
    }
    let retry_hook = hookd.hook(&retry_sink.url("/r"), "cli.retry");
    let replay_hook = hookd.hook(&replay_sink.url("/p"), "cli.replay");
    let held_hook = hookd.hook(&held_sink.url("/h"), "cli.held");
    let since = rfc3339_now(-60_000);

    let retry_evt = hookd.publish("cli.retry", "1", json!({"k": 1}));
    let replay_evt = hookd.publish("cli.replay", "2", json!({"k": 2}));
    let dead_evt = hookd.publish("cli.held", "3", json!({"k": 3}));
    let dead = hookd.wait_delivery(&retry_hook.id, &retry_evt, "dead");
    let dead_id = dead["id"].as_str().unwrap().to_string();
    let replay_dead = hookd.wait_delivery(&replay_hook.id, &replay_evt, "dead");
    // The held hook: two failed attempts (dead), then one more makes it inactive.
    hookd.wait_delivery(&held_hook.id, &dead_evt, "dead");
    let held_evt = hookd.publish("cli.held", "4", json!({"k": 4}));
    hookd.wait_hook(&held_hook.id, "inactive", |r| {
        r.body["status"] == "inactive"
    });

    // The dead deliveries show, as JSON and as a table, filtered by status and hook.
    let listed = cli(&hookd, &["deliveries", "list", "--status", "dead"], true).json();
    let ids = ids_in(&listed);
    assert!(ids.contains(&dead_id), "{listed}");
    assert!(
        ids.contains(&replay_dead["id"].as_str().unwrap().to_string()),
        "{listed}"
    );
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "dead"),
        "--status dead lists others: {listed}"
    );
    let one_hook = cli(
        &hookd,
        &[
            "deliveries",
            "list",
            "--status",
            "dead",
            "--hook",
            &retry_hook.id,
        ],
        true,
    )
    .json();
    assert_eq!(ids_in(&one_hook), vec![dead_id.clone()], "{one_hook}");
    let all_of_hook = cli(
        &hookd,
        &["deliveries", "list", "--hook", &held_hook.id],
        true,
    )
    .json();
    assert_eq!(
        all_of_hook.as_array().map(Vec::len),
        Some(2),
        "{all_of_hook}"
    );
    let table = cli(&hookd, &["deliveries", "list", "--status", "dead"], false);
    let (_, rows) = table.table_with(&["ID", "STATUS"]);
    assert!(
        rows.iter()
            .any(|r| r[0] == dead_id && r.contains(&"dead".to_string())),
        "{}",
        table.stdout
    );
    let shown = cli(&hookd, &["hooks", "show", &held_hook.id], true).json();
    assert_eq!(shown["status"], "inactive", "{shown}");

    // The receivers recover; the CLI queues the work; the live server sends it.
    for s in [&retry_sink, &replay_sink, &held_sink] {
        s.set_default(200);
    }
    cli(&hookd, &["deliveries", "retry", &dead_id], false);
    let replayed = cli(
        &hookd,
        &["replay", "--hook", &replay_hook.id, "--since", &since],
        true,
    )
    .json();
    assert_eq!(replayed["queued"], 1, "{replayed}");
    cli(&hookd, &["hooks", "activate", &held_hook.id], false);

    let resent = wait_arrival(&retry_sink, &retry_evt, REREAD);
    assert_eq!(resent, dead_id, "a retry keeps its webhook-id");
    wait_arrival(&replay_sink, &replay_evt, REREAD);
    wait_arrival(&held_sink, &held_evt, REREAD);
    hookd.wait_delivery(&retry_hook.id, &retry_evt, "delivered");
    hookd.wait_delivery(&held_hook.id, &held_evt, "delivered");
    let r = hookd.get(&hookd.admin, &format!("/v1/hooks/{}", held_hook.id));
    assert_eq!(r.expect(200)["status"], "active");

    // Stats: hooks by status, backlog, and the last hour's results.
    let stats = cli(&hookd, &["stats"], true).json();
    assert_eq!(stats["hooks"]["active"], 3, "{stats}");
    assert_eq!(stats["hooks"]["inactive"], 0, "{stats}");
    assert_eq!(stats["backlog"], 0, "{stats}");
    let hour = &stats["last_hour"];
    for k in ["delivered", "failed", "dead"] {
        assert!(hour[k].is_u64(), "last_hour.{k}: {stats}");
    }
    assert!(hour["delivered"].as_u64() >= Some(3), "{stats}");
    assert!(hour["failed"].as_u64() >= Some(7), "{stats}");
}

#[test]
fn hooks_are_listed_shown_and_deleted_and_the_database_backed_up() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let a = hookd.hook(&sink.url("/a"), "cli.a");
    let b = hookd.hook(&sink.url("/b"), "cli.*");
    let evt = hookd.publish("cli.a", "1", json!(null));
    hookd.wait_delivery(&a.id, &evt, "delivered");

    let listed = cli(&hookd, &["hooks", "list"], true).json();
    let mut ids = ids_in(&listed);
    ids.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(ids, want, "{listed}");
    let table = cli(&hookd, &["hooks", "list"], false);
    let (_, rows) = table.table_with(&["ID", "STATUS", "TARGET_URL"]);
    assert_eq!(rows.len(), 2, "{}", table.stdout);
    assert!(
        rows.iter().all(|r| r.contains(&"active".to_string())),
        "{}",
        table.stdout
    );
    let tenant = cli(&hookd, &["hooks", "list", "--tenant", "elsewhere"], true).json();
    assert_eq!(tenant, json!([]), "another tenant's list");

    let shown = cli(&hookd, &["hooks", "show", &a.id], true).json();
    assert_eq!(shown["id"], a.id);
    assert_eq!(shown["target_url"], sink.url("/a"));
    assert!(shown["last_success"].is_string(), "{shown}");
    assert!(
        !shown.to_string().contains(&a.secret),
        "hooks show prints the secret"
    );
    let human = cli(&hookd, &["hooks", "show", &a.id], false);
    assert!(human.stdout.contains(&a.id), "{}", human.stdout);

    cli(&hookd, &["hooks", "delete", &b.id], false);
    hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", b.id))
        .expect_error(404, "not_found");
    let listed = cli(&hookd, &["hooks", "list"], true).json();
    assert_eq!(ids_in(&listed), vec![a.id.clone()], "{listed}");
    // The running server sees the deletion at once: its next publish fans out to `a`
    // only (the server keeps the hooks' patterns in memory and reloads them when
    // another process changed the file).
    let published = hookd.publish_json(json!({"type": "cli.a", "resource_id": "2", "data": null}));
    assert_eq!(
        published["deliveries"], 1,
        "after `hooks delete` by the CLI: {published}"
    );
    // Delivered before `stats` counts the backlog.
    hookd.wait_delivery(&a.id, published["id"].as_str().unwrap(), "delivered");

    let stats = cli(&hookd, &["stats"], true).json();
    assert_eq!(stats["hooks"]["active"], 1, "{stats}");
    assert_eq!(stats["backlog"], 0, "{stats}");
    assert!(
        stats["last_hour"]["delivered"].as_u64() >= Some(1),
        "{stats}"
    );
    let human = cli(&hookd, &["stats"], false);
    assert!(
        human.stdout.contains("active") && human.stdout.contains("backlog"),
        "{}",
        human.stdout
    );

    // A backup taken while the server runs is a database the CLI can read.
    let copy = hookd.dir().join("copy.db");
    cli(&hookd, &["backup", copy.to_str().unwrap()], false);
    assert!(copy.exists(), "no backup file");
    let from_copy = hookd_cli(&["hooks", "list", "--db", copy.to_str().unwrap(), "--json"]).ok();
    assert_eq!(ids_in(&from_copy.json()), vec![a.id.clone()]);
    let again = hookd_cli(&[
        "backup",
        copy.to_str().unwrap(),
        "--db",
        hookd.db_path().to_str().unwrap(),
    ]);
    assert_ne!(again.code, Some(0), "a backup overwrote an existing file");
    hookd.assert_healthy();
}

#[test]
fn commands_that_change_things_answer_json_with_json() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/j"), "cli.j");
    let key = hookd.key("publisher", None);
    let dir = hookd.dir().to_path_buf();
    let copy = dir.join("json-copy.db");
    let since = rfc3339_now(-60_000);
    let evt = hookd.publish("cli.j", "1", json!(null));
    let delivered = hookd.wait_delivery(&hook.id, &evt, "delivered");
    let dlv = delivered["id"].as_str().unwrap().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["keys", "revoke", &key.id],
        vec!["hooks", "activate", &hook.id],
        vec!["deliveries", "retry", &dlv],
        vec!["replay", "--hook", &hook.id, "--since", &since],
        vec!["backup", copy.to_str().unwrap()],
        vec!["hooks", "delete", &hook.id],
    ];
    let mut not_json = Vec::new();
    for args in commands {
        let run = cli(&hookd, &args, true);
        if serde_json::from_str::<Value>(run.stdout.trim()).is_err() {
            not_json.push(format!("hookd {args:?} --json printed {:?}", run.stdout));
        }
    }
    assert!(
        not_json.is_empty(),
        "--json is ignored:\n{}",
        not_json.join("\n")
    );
    assert!(Path::new(&copy).exists());
}
