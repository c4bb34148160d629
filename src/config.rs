//! Flags and environment, validated once into plain values ([`Config`]). Nothing else in
//! hookd reads argv or `HOOKD_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hookd", version, about = "A REST Hooks engine in one binary")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API and the delivery engine.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Admin(crate::cli::AdminCommand),
    /// Load-test a real `hookd serve` on this machine and print what it sustains.
    Bench(Box<crate::bench::BenchArgs>),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// SQLite database file (created with its schema when missing).
    #[arg(long, env = "HOOKD_DB", default_value = "./hookd.db")]
    pub db: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "HOOKD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Dispatcher threads (deliveries in flight at once).
    #[arg(long, env = "HOOKD_DISPATCHERS", default_value_t = 32)]
    pub dispatchers: usize,
    /// Requests served at once (each on its connection's thread, with a read
    /// connection of its own).
    #[arg(long, env = "HOOKD_HANDLERS", default_value_t = 32)]
    pub handlers: usize,
    /// Allow targets on loopback and private networks.
    #[arg(
        long,
        env = "HOOKD_ALLOW_PRIVATE_TARGETS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_private_targets: bool,
    /// Delays before each retry, comma separated (`ms`, `s`, `m`, `h`, `d`).
    #[arg(
        long,
        env = "HOOKD_RETRY_SCHEDULE",
        default_value = "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h"
    )]
    pub retry_schedule: String,
    /// Time limit per delivery attempt, connect included.
    #[arg(long, env = "HOOKD_DELIVERY_TIMEOUT", default_value = "10s")]
    pub delivery_timeout: String,
    /// Consecutive failed attempts that make a hook inactive (0 never disables).
    #[arg(long, env = "HOOKD_DISABLE_AFTER", default_value_t = 50)]
    pub disable_after: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HOOKD_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Open one private network to targets (CIDR); repeatable.
    #[arg(
        long = "allow-target-net",
        env = "HOOKD_ALLOW_TARGET_NETS",
        value_delimiter = ','
    )]
    pub allow_target_nets: Vec<String>,
    /// Receiver platforms that cannot answer a handshake: hooks to these hosts (and
    /// their subdomains) are active at once.
    #[arg(long, env = "HOOKD_TRUST_TARGET_HOSTS", value_delimiter = ',')]
    pub trust_target_hosts: Vec<String>,
    /// Fixed address for a host name, `HOST=IP` (like curl's --resolve); repeatable.
    #[arg(long = "resolve", env = "HOOKD_RESOLVE", value_delimiter = ',')]
    pub resolve: Vec<String>,
    /// Key file sealing hook secrets [default: hookd.key beside the database].
    #[arg(long, env = "HOOKD_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Requests per second allowed per API key (token bucket; 0 = unlimited).
    #[arg(long, env = "HOOKD_RATE_LIMIT", default_value_t = 5000)]
    pub rate_limit: u32,
    /// Most live hooks one tenant may hold.
    #[arg(long, env = "HOOKD_MAX_HOOKS_PER_TENANT", default_value_t = 1000)]
    pub max_hooks_per_tenant: u32,
    /// Room in the database writer's queue; when it is full, publishes wait up to
    /// --enqueue-timeout and are then answered 503 with Retry-After.
    #[arg(long, env = "HOOKD_WRITER_QUEUE", default_value_t = 8192)]
    pub writer_queue: usize,
    /// How long a request waits for room in the writer's queue before a 503.
    #[arg(long, env = "HOOKD_ENQUEUE_TIMEOUT", default_value = "2s")]
    pub enqueue_timeout: String,
    /// How long in-flight deliveries may take to finish at shutdown.
    #[arg(long, env = "HOOKD_SHUTDOWN_TIMEOUT", default_value = "10s")]
    pub shutdown_timeout: String,
    /// Delivered and dead deliveries (and events no longer needed) are pruned after this.
    #[arg(long, env = "HOOKD_RETENTION", default_value = "7d")]
    pub retention: String,
    /// A client connection that sends nothing for this long is closed.
    #[arg(long, env = "HOOKD_READ_TIMEOUT", default_value = "10s")]
    pub read_timeout: String,
    /// How often the scheduler re-reads which hooks have undelivered rows. Work this
    /// server queues wakes it at once; this is how it sees rows the CLI queued (a
    /// replay, a retry) from another process.
    #[arg(long, env = "HOOKD_RESYNC_INTERVAL", default_value = "5s")]
    pub resync_interval: String,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub dispatchers: usize,
    pub handlers: usize,
    pub allow_private_targets: bool,
    /// Delay before retry n (0-based); its length + 1 is the number of attempts.
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    pub disable_after: u32,
    pub max_body: usize,
    /// `HOOKD_ADMIN_TOKEN`: when set, this token is an admin key.
    pub admin_token: Option<String>,
    /// Which delivery targets are allowed.
    pub target_policy: crate::target::Policy,
    pub trust_target_hosts: Vec<String>,
    pub secrets_key_file: PathBuf,
    pub rate_limit: u32,
    pub max_hooks_per_tenant: u32,
    pub read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub retention: Duration,
    pub writer_queue: usize,
    pub enqueue_timeout: Duration,
    pub resync_interval: Duration,
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ServeArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let retry_schedule = parse_schedule(&self.retry_schedule)
            .map_err(|e| ConfigError(format!("--retry-schedule: {e}")))?;
        let delivery_timeout = flag_duration("--delivery-timeout", &self.delivery_timeout)?;
        if delivery_timeout.is_zero() {
            return Err(ConfigError("--delivery-timeout must be above 0".into()));
        }
        if self.dispatchers == 0 || self.dispatchers > 4096 {
            return Err(ConfigError("--dispatchers must be 1..=4096".into()));
        }
        if self.handlers == 0 || self.handlers > 1024 {
            return Err(ConfigError("--handlers must be 1..=1024".into()));
        }
        if self.max_body < 1024 {
            return Err(ConfigError("--max-body must be at least 1024".into()));
        }
        let read_timeout = flag_duration("--read-timeout", &self.read_timeout)?;
        if read_timeout.is_zero() {
            return Err(ConfigError("--read-timeout must be above 0".into()));
        }
        let shutdown_timeout = flag_duration("--shutdown-timeout", &self.shutdown_timeout)?;
        let retention = flag_duration("--retention", &self.retention)?;
        if retention.is_zero() {
            return Err(ConfigError("--retention must be above 0".into()));
        }
        let enqueue_timeout = flag_duration("--enqueue-timeout", &self.enqueue_timeout)?;
        let resync_interval = flag_duration("--resync-interval", &self.resync_interval)?;
        if resync_interval.is_zero() {
            return Err(ConfigError("--resync-interval must be above 0".into()));
        }
        if self.writer_queue == 0 {
            return Err(ConfigError("--writer-queue must be at least 1".into()));
        }
        let mut target_policy = crate::target::Policy {
            allow_private: self.allow_private_targets,
            ..Default::default()
        };
        for net in &self.allow_target_nets {
            target_policy.allowed_nets.push(
                net.trim()
                    .parse()
                    .map_err(|e| ConfigError(format!("--allow-target-net `{net}`: {e}")))?,
            );
        }
        for entry in &self.resolve {
            let (host, ip) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("--resolve `{entry}`: use HOST=IP")))?;
            let ip = ip
                .trim()
                .parse()
                .map_err(|e| ConfigError(format!("--resolve `{entry}`: {e}")))?;
            target_policy
                .overrides
                .entry(host.trim().trim_end_matches('.').to_ascii_lowercase())
                .or_default()
                .push(ip);
        }
        let secrets_key_file = self.secrets_key_file.clone().unwrap_or_else(|| {
            self.db
                .parent()
                .map(|p| p.join("hookd.key"))
                .unwrap_or_else(|| PathBuf::from("hookd.key"))
        });
        let admin_token = std::env::var("HOOKD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(Config {
            db: self.db,
            listen: self.listen,
            dispatchers: self.dispatchers,
            handlers: self.handlers,
            allow_private_targets: self.allow_private_targets,
            retry_schedule,
            delivery_timeout,
            disable_after: self.disable_after,
            max_body: self.max_body,
            admin_token,
            target_policy,
            trust_target_hosts: self
                .trust_target_hosts
                .iter()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
            secrets_key_file,
            rate_limit: self.rate_limit,
            max_hooks_per_tenant: self.max_hooks_per_tenant,
            read_timeout,
            shutdown_timeout,
            retention,
            writer_queue: self.writer_queue,
            enqueue_timeout,
            resync_interval,
        })
    }
}

/// A duration flag, with the flag named in the error.
fn flag_duration(flag: &str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|e| ConfigError(format!("{flag}: {e}")))
}

/// `"5s,30s,2m"` → delays. An empty string means no retries.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|part| parse_duration(part.trim()))
        .collect()
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"` → a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a number followed by a unit"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m, h, d)")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_default_schedule() {
        let s = parse_schedule("5s,30s,2m,10m,30m,1h,3h,6h,12h,24h").unwrap();
        assert_eq!(s.len(), 10);
        assert_eq!(s[2], Duration::from_secs(120));
        assert_eq!(s[9], Duration::from_secs(86_400));
        assert_eq!(
            parse_schedule("100ms").unwrap(),
            vec![Duration::from_millis(100)]
        );
        assert!(parse_schedule("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["5", "s", "5w", "-1s", "1.5s", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }
}
