//! The operator's command line: keys, hooks, deliveries, replay, stats and backup,
//! working on the database file directly (see [`store::Direct`]) so they work when the
//! server is down and are safe while it runs. Human tables by default, `--json` for
//! scripts. Reuses the store's operations; no SQL here.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::clock::{now_ms, parse_rfc3339, rfc3339};
use crate::model::{Delivery, DeliveryStatus, Hook, Role};
use crate::store::{self, Direct, StoreError, WriteOp, WriteOutput};

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// API keys: create, list, revoke.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Hooks: list, show, activate, delete.
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// The delivery log: list, retry.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Queue every dead delivery of a hook since a time again.
    Replay(ReplayArgs),
    /// Hooks by status, backlog, and the last hour's results.
    Stats(Common),
    /// Write a consistent copy of the database to PATH; safe while `serve` runs.
    Backup(BackupArgs),
}

/// What every command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The database file.
    #[arg(long, env = "HOOKD_DB", default_value = "./hookd.db", global = true)]
    pub db: PathBuf,
    /// Key file sealing hook secrets [default: hookd.key beside the database].
    #[arg(long, env = "HOOKD_SECRETS_KEY_FILE", global = true)]
    pub secrets_key_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its token is printed once.
    Create {
        /// admin, publisher or subscriber.
        #[arg(long)]
        role: String,
        /// The tenant of a subscriber key.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// List live keys (never their tokens).
    List(Common),
    /// Revoke a key at once.
    Revoke {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum HooksCommand {
    /// List live hooks.
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// One hook.
    Show {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Make a hook active and resume its held deliveries (no handshake: an operator's
    /// decision).
    Activate {
        id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a hook; its undelivered deliveries are cancelled.
    Delete {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeliveriesCommand {
    /// Recent deliveries, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        hook: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Send a dead or delivered delivery again.
    Retry {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[arg(long)]
    pub hook: String,
    /// RFC 3339 time, e.g. 2026-12-04T10:00:00Z.
    #[arg(long)]
    pub since: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the copy (must not exist yet).
    pub path: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

type CliResult = Result<(), String>;

fn open(common: &Common) -> Result<Direct, String> {
    let key = common.secrets_key_file.clone().unwrap_or_else(|| {
        common
            .db
            .parent()
            .map(|p| p.join("hookd.key"))
            .unwrap_or_else(|| PathBuf::from("hookd.key"))
    });
    Direct::open(&common.db, &key).map_err(|e| e.to_string())
}

fn err(e: StoreError) -> String {
    match e {
        StoreError::NotFound => "not found".to_string(),
        other => other.to_string(),
    }
}

/// Prints `rows` as JSON or as an aligned table with `columns`.
fn print(common: &Common, columns: &[&str], rows: Vec<Value>) {
    if common.json {
        println!("{}", Value::Array(rows));
        return;
    }
    let cell = |v: &Value, c: &str| match &v[c] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in &rows {
        println!("{}", line(columns.iter().map(|c| cell(r, c)).collect()));
    }
}

/// Says what a command did: a sentence, or with `--json` the object.
fn done(common: &Common, human: String, json: Value) {
    if common.json {
        println!("{json}");
    } else {
        println!("{human}");
    }
}

fn hook_row(h: &Hook) -> Value {
    json!({
        "id": h.id, "tenant": h.tenant, "status": h.status.as_str(), "target_url": h.target_url,
        "events": h.events.join(","), "payload": h.payload.as_str(), "batch_max": h.batch_max,
        "consecutive_failures": h.consecutive_failures, "created_at": rfc3339(h.created_at),
    })
}

fn delivery_row(d: &Delivery) -> Value {
    let last = d.attempts.last();
    json!({
        "id": d.id, "hook_id": d.hook_id, "sequence": d.sequence, "status": d.status.as_str(),
        "events": d.event_ids.len(), "attempts": d.attempts.len(),
        "last_result": last.map(|a| a.status_code.map(|c| c.to_string())
            .unwrap_or_else(|| a.error.clone().unwrap_or_default())),
        "next_attempt_at": d.next_attempt_at.map(rfc3339),
        "created_at": rfc3339(d.created_at),
    })
}

/// Runs one operator command.
pub fn run(command: AdminCommand) -> CliResult {
    match command {
        AdminCommand::Keys(k) => keys(k),
        AdminCommand::Hooks(h) => hooks(h),
        AdminCommand::Deliveries(d) => deliveries(d),
        AdminCommand::Replay(r) => replay(r),
        AdminCommand::Stats(c) => stats(&c),
        AdminCommand::Backup(b) => {
            store::backup(&b.common.db, &b.path).map_err(|e| e.to_string())?;
            done(
                &b.common,
                format!(
                    "backed up {} to {}",
                    b.common.db.display(),
                    b.path.display()
                ),
                json!({"backup": b.path.display().to_string(), "db": b.common.db.display().to_string()}),
            );
            eprintln!(
                "note: hook secrets in the copy are sealed with the key file \
                 (hookd.key beside the database); keep a copy of it, stored apart"
            );
            Ok(())
        }
    }
}

fn keys(command: KeysCommand) -> CliResult {
    match command {
        KeysCommand::Create {
            role,
            tenant,
            common,
        } => {
            let role = Role::parse(&role).ok_or("--role must be admin, publisher or subscriber")?;
            if (role == Role::Subscriber) != tenant.is_some() {
                return Err("--tenant is required for subscriber keys and only for them".into());
            }
            let token = crate::ids::new_token();
            let out = open(&common)?
                .apply(WriteOp::CreateKey {
                    token_hash: store::token_hash(&token),
                    role,
                    tenant,
                })
                .map_err(err)?;
            let WriteOutput::Key(key) = out else {
                return Err("unexpected answer from the store".into());
            };
            print(
                &common,
                &["id", "role", "tenant", "token"],
                vec![
                    json!({"id": key.id, "role": key.role.as_str(), "tenant": key.tenant, "token": token}),
                ],
            );
            Ok(())
        }
        KeysCommand::List(common) => {
            let reader = open(&common)?.reader().map_err(err)?;
            let mut rows = Vec::new();
            let mut after = String::new();
            loop {
                let page = reader.list_keys(&after, 500).map_err(err)?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                rows.extend(page.iter().map(|k| {
                    json!({"id": k.id, "role": k.role.as_str(), "tenant": k.tenant,
                           "created_at": rfc3339(k.created_at)})
                }));
            }
            print(&common, &["id", "role", "tenant", "created_at"], rows);
            Ok(())
        }
        KeysCommand::Revoke { id, common } => {
            open(&common)?
                .apply(WriteOp::RevokeKey { id: id.clone() })
                .map_err(err)?;
            done(
                &common,
                format!("revoked {id}"),
                json!({"id": id, "revoked": true}),
            );
            Ok(())
        }
    }
}

fn hooks(command: HooksCommand) -> CliResult {
    match command {
        HooksCommand::List { tenant, common } => {
            let reader = open(&common)?.reader().map_err(err)?;
            let mut rows = Vec::new();
            let mut after = String::new();
            loop {
                let page = reader
                    .list_hooks(tenant.as_deref(), &after, 500)
                    .map_err(err)?;
                let Some(last) = page.last() else { break };
                after = last.id.clone();
                rows.extend(page.iter().map(hook_row));
            }
            print(
                &common,
                &[
                    "id",
                    "tenant",
                    "status",
                    "consecutive_failures",
                    "events",
                    "target_url",
                ],
                rows,
            );
            Ok(())
        }
        HooksCommand::Show { id, common } => {
            let reader = open(&common)?.reader().map_err(err)?;
            let hook = reader.hook(&id).map_err(err)?.ok_or("not found")?;
            let mut row = hook_row(&hook);
            let last_success = reader
                .deliveries(&id, Some(DeliveryStatus::Delivered), 0, 1)
                .map_err(err)?
                .first()
                .and_then(|d| d.attempts.last().map(|a| rfc3339(a.at)));
            row["last_success"] = json!(last_success);
            if common.json {
                println!("{row}");
            } else if let Value::Object(map) = &row {
                for (k, v) in map {
                    println!(
                        "{k:<22} {}",
                        v.as_str().map_or(v.to_string(), str::to_string)
                    );
                }
            }
            Ok(())
        }
        HooksCommand::Activate { id, common } => {
            open(&common)?
                .apply(WriteOp::ActivateHook {
                    id: id.clone(),
                    scope: None,
                })
                .map_err(err)?;
            done(
                &common,
                format!("activated {id}; a running server resumes its deliveries within seconds"),
                json!({"id": id, "status": "active"}),
            );
            Ok(())
        }
        HooksCommand::Delete { id, common } => {
            open(&common)?
                .apply(WriteOp::DeleteHook {
                    id: id.clone(),
                    scope: None,
                })
                .map_err(err)?;
            done(
                &common,
                format!("deleted {id}"),
                json!({"id": id, "deleted": true}),
            );
            Ok(())
        }
    }
}

fn deliveries(command: DeliveriesCommand) -> CliResult {
    match command {
        DeliveriesCommand::List {
            status,
            hook,
            limit,
            common,
        } => {
            let status = status
                .map(|s| {
                    DeliveryStatus::parse(&s)
                        .ok_or("--status must be pending, failed, delivered, dead or cancelled")
                })
                .transpose()?;
            let reader = open(&common)?.reader().map_err(err)?;
            let list = match hook {
                Some(h) => reader.deliveries(&h, status, 0, limit),
                None => reader.recent_deliveries(status, limit),
            }
            .map_err(err)?;
            print(
                &common,
                &[
                    "id",
                    "hook_id",
                    "sequence",
                    "status",
                    "attempts",
                    "last_result",
                    "next_attempt_at",
                ],
                list.iter().map(delivery_row).collect(),
            );
            Ok(())
        }
        DeliveriesCommand::Retry { id, common } => {
            open(&common)?
                .apply(WriteOp::RetryDelivery {
                    id: id.clone(),
                    scope: None,
                })
                .map_err(err)?;
            done(
                &common,
                format!("queued {id} again"),
                json!({"id": id, "status": "pending"}),
            );
            Ok(())
        }
    }
}

fn replay(args: ReplayArgs) -> CliResult {
    let since = parse_rfc3339(&args.since).ok_or("--since must be an RFC 3339 time")?;
    let out = open(&args.common)?
        .apply(WriteOp::Replay {
            hook_id: args.hook.clone(),
            scope: None,
            since,
        })
        .map_err(err)?;
    let n = match out {
        WriteOutput::Count(n) => n,
        _ => 0,
    };
    if args.common.json {
        println!("{}", json!({"queued": n}));
    } else {
        println!("queued {n} dead deliveries of {} again", args.hook);
    }
    Ok(())
}

fn stats(common: &Common) -> CliResult {
    let reader = open(common)?.reader().map_err(err)?;
    let gauges = reader.gauges().map_err(err)?;
    let (ok, failed, dead) = reader.activity(now_ms() - 3_600_000).map_err(err)?;
    let hooks: serde_json::Map<String, Value> = gauges
        .hooks_by_status
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    let v = json!({
        "hooks": hooks,
        "backlog": gauges.outbox_pending,
        "last_hour": {"delivered": ok, "failed": failed, "dead": dead},
    });
    if common.json {
        println!("{v}");
    } else {
        let mut rows: Vec<Value> = gauges
            .hooks_by_status
            .iter()
            .map(|(s, n)| json!({"what": format!("hooks {s}"), "count": n}))
            .collect();
        rows.push(json!({"what": "backlog", "count": gauges.outbox_pending}));
        rows.push(json!({"what": "delivered, last hour", "count": ok}));
        rows.push(json!({"what": "failed attempts, last hour", "count": failed}));
        rows.push(json!({"what": "dead, last hour", "count": dead}));
        print(common, &["what", "count"], rows);
    }
    Ok(())
}
