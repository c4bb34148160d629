//! `hookd bench`: the built-in load test (issue 5). It starts a real `hookd serve` child
//! per case (this same executable, a fresh database, loopback), an in-process receiver
//! that verifies every signature and records every arrival, and load generators that
//! write prepared requests over raw keep-alive sockets; then prints a table (or JSON)
//! of each figure against its target and against the bare ceiling of the generator or
//! of the delivery client measured on the same machine in the same run.
//!
//! Layout: [`http`] (the tiny client and message parsing), [`receiver`], [`loadgen`],
//! [`child`] (the server under test and `/proc` figures), [`bounds`] (what publishing
//! and delivering meet before hookd's own work), [`scenarios`] (what is run and
//! measured), [`report`] (results, the table, the JSON).
//!
//! It only talks to hookd over HTTP, as any client would: it must not reach into the
//! store or the engine. It reuses `sign` to verify signatures and `dispatch::client`
//! for the delivery ceiling, so that both are exactly what hookd itself uses. The one
//! exception is the `outbox` scenario, which grows the database of a server it has
//! stopped through `store::fill` (millions of delivered rows would take hours over
//! HTTP), then starts a server on it again.

mod bounds;
mod child;
mod http;
mod loadgen;
mod receiver;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use clap::{Args, ValueEnum};

/// `hookd bench` flags. Defaults run every scenario in under five minutes on a 2-core
/// machine; tiny sizes make a smoke test.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenario to run (repeatable); every scenario when none is given.
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Length of each timed load phase (ingest, ingest-batch, deliver, and the four of
    /// outbox), seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Length of each bare-ceiling measurement, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub ceiling_seconds: f64,
    /// Concurrent publishing clients (ingest, ingest-batch, and every other publishing
    /// phase).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Events per array publish (ingest-batch; deliver and backlog publish this way).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Hooks that deliver, backlog and outbox spread their events over.
    #[arg(long, default_value_t = 100)]
    pub hooks: usize,
    /// `batch_max` values the deliver scenario runs with.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub deliver_batch_max: Vec<u32>,
    /// Publish rate of the latency scenario, events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Length of the latency scenario, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub latency_seconds: f64,
    /// Hook counts the fanout scenario publishes one event to.
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    pub fanout: Vec<usize>,
    /// Measured fan-outs per hook count (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub fanout_reps: usize,
    /// Undelivered events queued in the backlog scenario [default: 1,000,000, reduced
    /// when the run would not fit in --budget; the output says so].
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Delivered rows the outbox scenario adds to its database before measuring again
    /// [default: 10,000,000, reduced when the run would not fit in --budget; the output
    /// says so].
    #[arg(long)]
    pub outbox_rows: Option<u64>,
    /// Time the whole run should fit in (seconds); the default backlog and outbox are
    /// sized to it.
    #[arg(long, default_value_t = 280.0)]
    pub budget: f64,
    /// hookd's dispatcher threads (passed to `serve`); also the threads of the bare
    /// delivery-client ceiling.
    #[arg(long, default_value_t = 32)]
    pub dispatchers: usize,
    /// Extra flag for every `hookd serve` child (repeatable), e.g.
    /// `--serve-arg=--handlers=16`.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Where the temporary databases go [default: the system temp directory]. Put it on
    /// the disk hookd will run on: commits wait for fsync.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A scenario of issue 5, plus `idle` (start-up time and resting RSS). They run in this
/// order.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Idle,
    Ingest,
    IngestBatch,
    Deliver,
    Latency,
    Fanout,
    Backlog,
    // Ingest and deliver on an empty database, then again once it holds `--outbox-rows`
    // delivered rows (a `///` here would turn `--help`'s list of values into a table).
    Outbox,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Idle,
        Scenario::Ingest,
        Scenario::IngestBatch,
        Scenario::Deliver,
        Scenario::Latency,
        Scenario::Fanout,
        Scenario::Backlog,
        Scenario::Outbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Ingest => "ingest",
            Scenario::IngestBatch => "ingest-batch",
            Scenario::Deliver => "deliver",
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Backlog => "backlog",
            Scenario::Outbox => "outbox",
        }
    }
}

static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the run's monotonic clock: every timestamp the generator and the
/// receiver take is on it, so they can be subtracted from each other.
pub fn now_ns() -> u64 {
    CLOCK_BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Runs the benchmark and prints its results; `Err` (a non-zero exit) when a delivery
/// was lost, a signature failed to verify, or a scenario could not run.
pub fn run(args: BenchArgs) -> Result<(), String> {
    now_ns();
    validate(&args)?;
    let mut selected = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    // A fixed order: the backlog and the outbox, sized to what time is left, come last.
    selected.sort();
    selected.dedup();
    let run = scenarios::run_all(&args, &selected)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&run.json()).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", run.table());
    }
    if run.ok() {
        Ok(())
    } else {
        let failed: Vec<String> = run
            .cases
            .iter()
            .filter(|c| !c.check.ok())
            .map(|c| format!("{} {}", c.scenario, c.case))
            .collect();
        Err(format!(
            "bench failed: {} deliveries lost, {} bad signatures (in: {})",
            run.lost(),
            run.bad_signatures(),
            failed.join(", ")
        ))
    }
}

fn validate(args: &BenchArgs) -> Result<(), String> {
    let positive = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(format!("{flag} must be above 0"))
        }
    };
    positive(args.seconds, "--seconds")?;
    positive(args.ceiling_seconds, "--ceiling-seconds")?;
    positive(args.rate, "--rate")?;
    positive(args.latency_seconds, "--latency-seconds")?;
    if args.clients == 0 || args.hooks == 0 || args.dispatchers == 0 {
        return Err("--clients, --hooks and --dispatchers must be at least 1".into());
    }
    if args.batch == 0 || args.batch > 1000 {
        return Err("--batch must be 1 to 1000 (hookd's array publish limit)".into());
    }
    if args.deliver_batch_max.iter().any(|b| *b == 0 || *b > 1000) {
        return Err("--deliver-batch-max values must be 1 to 1000".into());
    }
    if args.fanout.contains(&0) {
        return Err("--fanout sizes must be at least 1".into());
    }
    Ok(())
}
