//! What `hookd bench` runs and measures. Each case gets a fresh `hookd serve` (so its
//! peak RSS and CPU belong to that case alone), sets up hooks through the API, runs its
//! load, waits for every delivery, and compares what arrived with what was accepted.
//! Bare ceilings are measured before the first case that needs them, with no hookd
//! running, and cached for the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bounds;
use super::child::{own_stats, ProcStats, Server};
use super::http::{fingerprint, ids_in, Conn};
use super::loadgen::{self, Body, Plan};
use super::receiver::{Arrival, Mode, Receiver};
use super::report::{num, Case, Ceilings, Check, Figure, Resources, Run, Target};
use super::{now_ns, BenchArgs, Scenario};

/// The backlog of issue 5, before it is fitted to the time budget.
const BACKLOG_DEFAULT: u64 = 1_000_000;
/// The outbox of issue 5 (delivered rows), before it is fitted to the time budget.
const OUTBOX_DEFAULT: u64 = 10_000_000;
/// Rows of the outbox's first fill, which is timed to size the rest to the budget.
const OUTBOX_PROBE: u64 = 200_000;
/// Least time kept for the outbox's fill when the backlog is sized to the budget.
const OUTBOX_MIN_FILL_S: f64 = 30.0;
/// The fill rate of a large outbox, as a share of the rate of its first rows.
const OUTBOX_RATE_FACTOR: f64 = 0.8;
/// How long a clean stop of hookd may take (its own default --shutdown-timeout is 10 s).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// A wait for deliveries gives up after this long without one arriving.
const STALL: Duration = Duration::from_secs(30);
/// Connections used to create (or activate) hooks in parallel.
const SETUP_CONNECTIONS: usize = 8;

/// A hook to create.
struct HookSpec {
    event: String,
    batch_max: u32,
}

/// A created hook.
struct Hook {
    id: String,
}

/// The one hook of the ingest phases: it takes large batches, so delivering what was
/// published does not take longer than publishing it.
fn ingest_hook() -> HookSpec {
    HookSpec {
        event: "bench.ingest".into(),
        batch_max: 1000,
    }
}

/// Events/s of `clients` connections publishing `body` in a closed loop to a server
/// that is not hookd (a ceiling or a bound), for `length`; nothing is recorded.
fn unchecked_rate(addr: SocketAddr, clients: usize, body: &Body, length: Duration) -> f64 {
    loadgen::closed_loop(&Plan {
        addr,
        clients,
        bodies: std::slice::from_ref(body),
        until: Instant::now() + length,
        max_events: None,
        window: None,
        record: false,
        progress: None,
        enough: None,
    })
    .rate()
}

/// The hooks of the delivery phases: hook `i` takes `bench.h{i}`.
fn deliver_hooks(h: usize, batch_max: u32) -> Vec<HookSpec> {
    (0..h)
        .map(|i| HookSpec {
            event: format!("bench.h{i}"),
            batch_max,
        })
        .collect()
}

/// What an ingest phase measured.
struct IngestRun {
    /// Accepted events per second.
    rate: f64,
    /// Publish round trip p50 and p99.
    round_trip: Vec<Figure>,
    resources: Resources,
}

/// An outbox phase's rate, and hookd's CPU per event in it.
#[derive(Debug, Clone, Copy)]
struct Rate {
    value: f64,
    cpu_us: Option<f64>,
}

/// The figure `name` of an outbox phase, against the bare `ceiling`; with `before`
/// (the same phase on the empty database), also the ratio to it, whose target is
/// 0.8, and a note comparing hookd's CPU per event, which other work on the machine
/// skews less than the rate.
fn compare_rate(case: &mut Case, name: &str, now: Rate, ceiling: f64, before: Option<Rate>) {
    case.figures
        .push(Figure::new(name, now.value, "1/s").ceiling(Some(ceiling)));
    let Some(before) = before else {
        return;
    };
    case.figures.push(
        Figure::new("grown / empty", now.value / before.value.max(1e-9), "ratio")
            .target(Target::at_least(0.8)),
    );
    if let (Some(a), Some(b)) = (now.cpu_us, before.cpu_us) {
        case.notes.push(format!(
            "hookd CPU per event {a:.0} µs, against {b:.0} µs on the empty database ({:+.0} %)",
            (a / b.max(1e-9) - 1.0) * 100.0
        ));
    }
}

/// What a delivery phase measured.
struct DeliverRun {
    /// Events per second, from the first publish to the last arrival.
    rate: f64,
    events_per_delivery: f64,
    resources: Resources,
}

/// CPU and time at the start of a measured phase.
struct Phase {
    at: Instant,
    hookd: ProcStats,
    bench: ProcStats,
}

struct Bench<'a> {
    args: &'a BenchArgs,
    rx: Receiver,
    dir: PathBuf,
    started: Instant,
    ceilings: Ceilings,
    cases: Vec<Case>,
    notes: Vec<String>,
    serial: usize,
    /// Every scenario of the run, for those that must leave time to the ones after.
    selected: Vec<Scenario>,
    /// CPU per event (hookd's and the generator's) of ingest-batch's phase, µs, once
    /// it ran: what publishing an event costs, for batch_max 1's budget.
    publish_cpu_us: Option<f64>,
}

/// Runs the selected scenarios in order and collects their cases.
pub fn run_all(args: &BenchArgs, selected: &[Scenario]) -> Result<Run, String> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut tag = [0u8; 6];
    crate::ids::random_bytes(&mut tag);
    let dir = base.join(format!(
        "hookd-bench-{}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let load_before = loadavg();
    let rx = Receiver::start().map_err(|e| format!("cannot start the receiver: {e}"))?;
    let mut bench = Bench {
        args,
        rx,
        dir: dir.clone(),
        started: Instant::now(),
        ceilings: Ceilings::default(),
        cases: Vec::new(),
        notes: Vec::new(),
        serial: 0,
        selected: selected.to_vec(),
        publish_cpu_us: None,
    };
    for scenario in selected {
        let before = bench.cases.len();
        let result = match scenario {
            Scenario::Idle => bench.idle(),
            Scenario::Ingest => bench.ingest(false),
            Scenario::IngestBatch => bench.ingest(true),
            Scenario::Deliver => bench.deliver(),
            Scenario::Latency => bench.latency(),
            Scenario::Fanout => bench.fanout(),
            Scenario::Backlog => bench.backlog(),
            Scenario::Outbox => bench.outbox(),
        };
        if let Err(e) = result {
            bench.progress(&format!("{}: FAILED: {e}", scenario.name()));
            let mut case = Case::new(scenario.name(), "(did not finish)");
            case.check.problems.push(e);
            bench.cases.push(case);
        }
        for case in &bench.cases[before..] {
            if !case.check.ok() {
                bench.progress(&format!(
                    "{} {}: {} lost, {} bad signatures {:?}",
                    case.scenario,
                    case.case,
                    case.check.lost,
                    case.check.bad_signatures,
                    case.check.problems
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let elapsed_s = bench.started.elapsed().as_secs_f64();
    if args.backlog.is_none() && args.outbox_rows.is_none() && elapsed_s > args.budget + 30.0 {
        bench.notes.push(format!(
            "the run took {elapsed_s:.0} s, over the {:.0} s budget",
            args.budget
        ));
    }
    Ok(Run {
        cases: bench.cases,
        ceilings: bench.ceilings,
        scenarios: selected.iter().map(|s| s.name()).collect(),
        elapsed_s,
        notes: bench.notes,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        dir: base.display().to_string(),
        load: (load_before, loadavg()),
    })
}

impl Bench<'_> {
    fn progress(&self, msg: &str) {
        eprintln!(
            "hookd bench [{:>6.1} s] {msg}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// A fresh hookd for one case, and a receiver with no hooks.
    fn launch(&mut self, label: &str, extra: &[String]) -> Result<Server, String> {
        self.rx.reset();
        self.serial += 1;
        let dir = self.dir.join(format!("{:02}-{label}", self.serial));
        self.relaunch(&dir, extra)
    }

    /// hookd on the database in `dir` (new, or a stopped server's), with the flags every
    /// case gets and `extra`; the receiver keeps its hooks.
    fn relaunch(&self, dir: &Path, extra: &[String]) -> Result<Server, String> {
        let mut flags = vec![
            "--dispatchers".to_string(),
            self.args.dispatchers.to_string(),
        ];
        flags.extend_from_slice(extra);
        Server::start(dir, &flags, &self.args.serve_args)
    }

    /// Creates hooks through the API (as an admin, skipping the handshake) from several
    /// connections at once, and registers their secrets with the receiver. Hook `i` of
    /// `specs` is the receiver's hook number `i`.
    fn create_hooks(&self, server: &Server, specs: &[HookSpec]) -> Result<Vec<Hook>, String> {
        let created: Mutex<Vec<Option<(String, String)>>> = Mutex::new(vec![None; specs.len()]);
        let failure: Mutex<Option<String>> = Mutex::new(None);
        let workers = SETUP_CONNECTIONS.min(specs.len()).max(1);
        thread::scope(|scope| {
            for w in 0..workers {
                let (created, failure) = (&created, &failure);
                let url = self.rx.url("hook");
                scope.spawn(move || {
                    let mut conn = match server.conn() {
                        Ok(c) => c,
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    };
                    for (i, spec) in specs.iter().enumerate().skip(w).step_by(workers) {
                        let body = json!({
                            "target_url": format!("{url}/{i}"),
                            "event": spec.event,
                            "batch_max": spec.batch_max,
                            "verify": false,
                        });
                        match conn.call("POST", "/v1/hooks", &server.token, Some(&body)) {
                            Ok((201, v)) => {
                                let id = v["id"].as_str().unwrap_or_default().to_string();
                                let secret = v["secret"].as_str().unwrap_or_default().to_string();
                                created.lock().unwrap_or_else(|p| p.into_inner())[i] =
                                    Some((id, secret));
                            }
                            other => {
                                *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(format!("creating hook {i}: {}", describe(other)));
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mut hooks = Vec::with_capacity(specs.len());
        for (i, entry) in created
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .enumerate()
        {
            let (id, secret) = entry.ok_or_else(|| format!("hook {i} was not created"))?;
            let n = self.rx.register(&id, &secret);
            debug_assert_eq!(n as usize, i);
            hooks.push(Hook { id });
        }
        Ok(hooks)
    }

    fn phase_start(&self, server: &Server) -> Phase {
        Phase {
            at: Instant::now(),
            hookd: server.stats(),
            bench: own_stats(),
        }
    }

    fn phase_end(&self, phase: &Phase, server: &Server, events: u64) -> Resources {
        let hookd = server.stats();
        let bench = own_stats();
        let phase_cpu_s = hookd.cpu_s - phase.hookd.cpu_s;
        Resources {
            phase_cpu_s,
            cpu_us_per_event: (events > 0).then(|| phase_cpu_s * 1e6 / events as f64),
            bench_phase_cpu_s: bench.cpu_s - phase.bench.cpu_s,
            phase_s: phase.at.elapsed().as_secs_f64(),
            ..Resources::default()
        }
    }

    /// Stops hookd and files the case with its resource figures.
    fn finish(&mut self, case: Case, server: Server, resources: Resources) {
        let startup = server.startup;
        let end = server.stop();
        self.file(case, startup, end, resources);
    }

    /// Files the case with its resource figures: hookd's `startup`, and `end`, its
    /// figures at the end of the case.
    fn file(
        &mut self,
        mut case: Case,
        startup: Duration,
        end: ProcStats,
        mut resources: Resources,
    ) {
        let errors = self.rx.counts().protocol_errors;
        if errors > 0 {
            case.notes.push(format!(
                "the receiver saw {errors} malformed requests or broken connections"
            ));
        }
        resources.startup_ms = startup.as_secs_f64() * 1e3;
        resources.peak_rss_mb = end.peak_rss_mb;
        resources.cpu_s = end.cpu_s;
        case.hookd = resources;
        self.cases.push(case);
    }

    /// Waits until the receiver has accepted `target` events. `false` if deliveries
    /// stopped coming for [`STALL`] or `limit` passed first.
    fn wait_events(&self, server: &mut Server, target: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut last = self.rx.events();
        let mut last_change = Instant::now();
        loop {
            let now_events = self.rx.events();
            if now_events >= target {
                return true;
            }
            let now = Instant::now();
            if now_events != last {
                last = now_events;
                last_change = now;
            }
            if now >= deadline || now - last_change >= STALL || !server.alive() {
                return false;
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    /// Compares `arrivals` with `expected` and adds the receiver's signature verdicts;
    /// `after[n]` is hook `n`'s last sequence number before (missing: 0).
    fn check(
        &self,
        expected: &[Vec<u64>],
        arrivals: &[Arrival],
        published: u64,
        after: &[u64],
    ) -> Check {
        let mut check = Check::compare(expected, arrivals, after);
        check.published = published;
        let counts = self.rx.counts();
        check.bad_signatures = counts.bad_signatures;
        for why in self.rx.bad_samples() {
            check
                .problems
                .push(format!("delivery refused by the receiver: {why}"));
        }
        check
    }

    /// Waits for `target` events and says so in the case when they do not all come.
    fn drain(&self, server: &mut Server, case: &mut Case, target: u64, limit: Duration) {
        if !self.wait_events(server, target, limit) {
            let got = self.rx.events();
            case.check.problems.push(format!(
                "gave up waiting for deliveries: {got} of {target} events arrived{}",
                if server.alive() {
                    String::new()
                } else {
                    format!("; hookd died:\n{}", server.log_tail())
                }
            ));
        }
    }

    // ----------------------------------------------------------------------------------
    // Bare ceilings
    // ----------------------------------------------------------------------------------

    /// The generator against the no-op server: events/s with `per_request` events per
    /// publish, from `clients` connections.
    fn generator_ceiling(&mut self, per_request: usize, clients: usize) -> f64 {
        if let Some(v) = self.ceilings.generator_events_per_s.get(&per_request) {
            return *v;
        }
        self.rx.reset();
        let events: Vec<(String, u32)> = vec![("bench.ingest".to_string(), 0); per_request];
        let body = loadgen::publish_body(self.rx.addr, "ceiling", &events, per_request > 1);
        self.progress(&format!(
            "ceiling: generator, {clients} clients, {per_request} event(s) per publish, against the no-op server"
        ));
        let rate = unchecked_rate(
            self.rx.addr,
            clients,
            &body,
            secs(self.args.ceiling_seconds),
        );
        self.ceilings
            .generator_events_per_s
            .insert(per_request, rate);
        rate
    }

    /// The generator against hookd's HTTP server doing no work (`bounds`): single
    /// publishes/s from `clients` connections. `None` if it could not be started.
    fn http_stack_bound(&mut self, clients: usize) -> Option<f64> {
        if self.ceilings.http_stack_events_per_s.is_none() {
            self.ceilings.http_stack_events_per_s = self.publish_bound(
                clients,
                "hookd's HTTP server doing no work",
                bounds::Stack::noop(),
            );
        }
        self.ceilings.http_stack_events_per_s
    }

    /// The generator against hookd's design doing none of hookd's work
    /// (`bounds::Stack::bare`): single publishes/s from `clients` connections, each
    /// committed durably by one writer thread before its answer. `None` if it could not
    /// be started.
    fn design_bound(&mut self, clients: usize) -> Option<f64> {
        if self.ceilings.bare_design_events_per_s.is_none() {
            let stack = bounds::Stack::bare(&self.dir.join("bound-design"));
            self.ceilings.bare_design_events_per_s =
                self.publish_bound(clients, "hookd's design doing none of hookd's work", stack);
        }
        self.ceilings.bare_design_events_per_s
    }

    /// Single publishes/s of the generator from `clients` connections against `stack`,
    /// a bound's server (`what`); `None`, with a note, if it could not be started.
    fn publish_bound(
        &mut self,
        clients: usize,
        what: &str,
        stack: std::io::Result<bounds::Stack>,
    ) -> Option<f64> {
        let stack = match stack {
            Ok(s) => s,
            Err(e) => {
                self.notes.push(format!("{what} could not start: {e}"));
                return None;
            }
        };
        let events = vec![("bench.ingest".to_string(), 0)];
        let body = loadgen::publish_body(stack.addr, "ceiling", &events, false);
        self.progress(&format!(
            "bound: generator, {clients} clients, single publishes, against {what}"
        ));
        Some(unchecked_rate(
            stack.addr,
            clients,
            &body,
            self.bound_length(),
        ))
    }

    /// How long each bound is measured: half a ceiling's time. They are steadier than
    /// the ceilings (a disk's commits, one server's answers), and the run's time goes to
    /// the outbox's fill.
    fn bound_length(&self) -> Duration {
        secs(self.args.ceiling_seconds / 2.0)
    }

    /// Durable commits/s of `rows` publish-sized rows each on one SQLite file in the
    /// bench's directory (`store::probe::durable_commits`). `None` if it failed.
    fn commit_bound(&mut self, rows: usize) -> Option<f64> {
        if let Some(v) = self.ceilings.durable_commits_per_s.get(&rows) {
            return Some(*v);
        }
        self.progress(&format!(
            "bound: durable commits of {rows} publish-sized rows each, one SQLite file"
        ));
        let row_bytes = loadgen::event_json("bench.ingest").len();
        let dir = self.dir.join("bound-commits");
        match crate::store::probe::durable_commits(&dir, rows, row_bytes, self.bound_length()) {
            Ok(rate) => {
                self.ceilings.durable_commits_per_s.insert(rows, rate);
                Some(rate)
            }
            Err(e) => {
                self.notes.push(e);
                None
            }
        }
    }

    /// CPU per outcome of a bare durable delivery log (`store::probe::outcome_cpu_us`) over
    /// `--hooks` hooks. `None` if it failed.
    fn outcome_bound(&mut self) -> Option<f64> {
        if self.ceilings.outcome_cpu_us.is_none() {
            self.progress("bound: CPU per outcome of a bare durable delivery log");
            let dir = self.dir.join("bound-outcomes");
            match crate::store::probe::outcome_cpu_us(
                &dir,
                self.args.hooks,
                self.bound_length(),
                super::child::thread_cpu_s,
            ) {
                Ok(v) => self.ceilings.outcome_cpu_us = Some(v),
                Err(e) => self.notes.push(e),
            }
        }
        self.ceilings.outcome_cpu_us
    }

    /// hookd's delivery client against the receiver: events/s with `batch` events per
    /// delivery, from as many threads as hookd has dispatchers.
    fn client_ceiling(&mut self, batch: u32) -> f64 {
        if let Some(v) = self.ceilings.client_events_per_s.get(&batch) {
            return *v;
        }
        self.rx.reset();
        self.rx.keep_arrivals(false);
        let hook_id = "hook_bench_ceiling";
        let secret = crate::sign::new_secret();
        self.rx.register(hook_id, &secret);
        let item = |seq: u32| {
            json!({
                "hook_id": hook_id,
                "event_id": format!("evt_01KBENCHCEILING{seq:011}"),
                "event": "bench.h0",
                "resource_id": "bench",
                "sequence": seq,
                "created_at": "2026-01-01T00:00:00.000Z",
            })
        };
        let body = if batch > 1 {
            Value::Array((1..=batch).map(item).collect())
        } else {
            item(1)
        };
        let body = body.to_string().into_bytes();
        self.progress(&format!(
            "ceiling: hookd's delivery client, {} threads, {batch} event(s) per delivery, against the receiver",
            self.args.dispatchers
        ));
        let (cpu_before, at) = (own_stats().cpu_s, Instant::now());
        let rps = loadgen::delivery_ceiling(
            &self.rx.url("ceiling"),
            &secret,
            &body,
            self.args.dispatchers,
            secs(self.args.ceiling_seconds),
        );
        let requests = rps * at.elapsed().as_secs_f64();
        if requests > 0.0 {
            self.ceilings
                .client_cpu_us_per_delivery
                .insert(batch, (own_stats().cpu_s - cpu_before) * 1e6 / requests);
        }
        let bad = self.rx.counts().bad_signatures;
        if bad > 0 {
            self.notes.push(format!(
                "the delivery-client ceiling saw {bad} bad signatures: {:?}",
                self.rx.bad_samples()
            ));
        }
        self.rx.reset();
        let rate = rps * f64::from(batch);
        self.ceilings.client_events_per_s.insert(batch, rate);
        rate
    }

    // ----------------------------------------------------------------------------------
    // Scenarios
    // ----------------------------------------------------------------------------------

    fn idle(&mut self) -> Result<(), String> {
        self.progress("idle: start-up time and resting memory");
        let server = self.launch("idle", &[])?;
        let mut conn = server.conn()?;
        let (status, _) = conn
            .call("GET", "/healthz", "", None)
            .map_err(|e| format!("healthz: {e}"))?;
        if status != 200 {
            return Err(format!("healthz answered {status}"));
        }
        drop(conn);
        thread::sleep(Duration::from_secs(1));
        let stats = server.stats();
        let mut case = Case::new("idle", "fresh database");
        case.figures.push(
            Figure::new("start-up", server.startup.as_secs_f64() * 1e3, "ms")
                .target(Target::at_most(100.0)),
        );
        case.figures
            .push(Figure::new("RSS at rest", stats.rss_mb, "MB").target(Target::at_most(30.0)));
        case.notes.push(format!(
            "start-up is from spawning the process to its `listening on` line, creating the \
             database included; {} threads at rest",
            stats.threads
        ));
        self.finish(case, server, Resources::default());
        Ok(())
    }

    /// `ingest` (single-event publishes) or `ingest-batch` (arrays of `--batch`), from
    /// `--clients` connections, to one matching hook.
    fn ingest(&mut self, batch: bool) -> Result<(), String> {
        let args = self.args;
        let (scenario, per_request) = if batch {
            ("ingest-batch", args.batch)
        } else {
            ("ingest", 1)
        };
        let ceiling = self.generator_ceiling(per_request, args.clients);
        let (stack, commits, design) = if batch {
            (None, None, None)
        } else {
            (
                self.http_stack_bound(args.clients),
                self.commit_bound(args.clients),
                self.design_bound(args.clients),
            )
        };
        self.progress(&format!(
            "{scenario}: {} clients, {per_request} event(s) per publish, {} s",
            args.clients, args.seconds
        ));
        let mut server = self.launch(scenario, &[])?;
        // The one matching hook takes large batches, so delivering what was published
        // does not take longer than publishing it.
        self.create_hooks(&server, &[ingest_hook()])?;
        let mut case = Case::new(
            scenario,
            format!("{} clients, {per_request}/publish", args.clients),
        );
        let run = self.ingest_phase(&mut server, &mut case, per_request, (0, 1), &[]);
        let (target, ratio) = if batch {
            (Target::at_least(100_000.0), None)
        } else {
            (Target::at_least(20_000.0), Some(Target::at_least(0.6)))
        };
        let mut figure = Figure::new("accepted events/s", run.rate, "1/s")
            .target(target)
            .ceiling(Some(ceiling));
        if let Some(r) = ratio {
            figure = figure.ratio_target(r);
        }
        case.figures.push(figure);
        if batch {
            self.publish_cpu_us = run.resources.all_cpu_us_per_event();
        }
        if let Some(bound) = stack {
            // What the ratio's miss is judged against: the HTTP server hookd must use,
            // doing nothing, with the same generator.
            case.figures.push(
                Figure::new("the HTTP server doing no work", bound, "1/s").ceiling(Some(ceiling)),
            );
            case.notes.push(format!(
                "hookd's HTTP server (tiny_http as hookd runs it) answering every publish \
                 without any work takes {bound:.0}/s from this generator; hookd reaches {:.0} % \
                 of that, and 60 % of the generator's ceiling ({:.0}/s) is {:.2}× it",
                100.0 * run.rate / bound,
                0.6 * ceiling,
                0.6 * ceiling / bound
            ));
        }
        if let Some(commits) = commits {
            // Each closed-loop client has one publish out, answered after its commit:
            // at most `clients` publishes per commit, whatever the server.
            let bound = commits * args.clients as f64;
            case.figures.push(
                Figure::new("any server on one SQLite file, at most", bound, "1/s")
                    .ceiling(Some(ceiling)),
            );
            case.notes.push(format!(
                "this disk takes {commits:.0} durable commits/s of {} publish-sized rows \
                 (one SQLite file, WAL, synchronous = FULL, no index); a publish is answered \
                 after its commit and each of the {} clients has one out, so no server \
                 on one SQLite file can accept more than {bound:.0} single publishes/s \
                 from them: {:.0} % of the generator's ceiling (target 60 %); hookd \
                 reaches {:.0} % of that bound",
                args.clients,
                args.clients,
                100.0 * bound / ceiling,
                100.0 * run.rate / bound
            ));
        }
        if let Some(bound) = design {
            // The design the product fixes, with hookd's own work taken out: what is
            // left is the design's share of the bound.
            case.figures.push(
                Figure::new("hookd's design doing none of its work", bound, "1/s")
                    .ceiling(Some(ceiling)),
            );
            case.notes.push(format!(
                "hookd's design with none of hookd's work (its HTTP server; each publish's \
                 body handed to one writer thread that commits it as a bare row with \
                 whatever else waits, durably, and answers after the commit) takes \
                 {bound:.0}/s from this generator: {:.0} % of the generator's ceiling \
                 (target 60 %); hookd reaches {:.0} % of it",
                100.0 * bound / ceiling,
                100.0 * run.rate / bound
            ));
        }
        case.figures.extend(run.round_trip);
        self.finish(case, server, run.resources);
        Ok(())
    }

    /// One ingest phase on a running hookd: `--clients` connections publish
    /// `per_request` events at a time (an array when more than one) of type
    /// `bench.ingest` for `--seconds`; then every accepted event must reach hook number
    /// `hook.0` of the `hook.1` registered. Notes, problems and the check go into
    /// `case`; `after[n]` is hook `n`'s last sequence number before the phase.
    fn ingest_phase(
        &self,
        server: &mut Server,
        case: &mut Case,
        per_request: usize,
        hook: (usize, usize),
        after: &[u64],
    ) -> IngestRun {
        let args = self.args;
        self.rx.clear();
        let events = vec![("bench.ingest".to_string(), hook.0 as u32); per_request];
        let body = loadgen::publish_body(server.addr, &server.token, &events, per_request > 1);
        let phase = self.phase_start(server);
        let out = loadgen::closed_loop(&Plan {
            addr: server.addr,
            clients: args.clients,
            bodies: std::slice::from_ref(&body),
            until: Instant::now() + secs(args.seconds),
            max_events: None,
            window: None,
            record: true,
            progress: None,
            enough: None,
        });
        let resources = self.phase_end(&phase, server, out.events);
        let mut lat = out.latencies_us.clone();
        let round_trip = vec![
            Figure::new(
                "publish round trip p50",
                percentile(&mut lat, 0.50) / 1e3,
                "ms",
            ),
            Figure::new(
                "publish round trip p99",
                percentile(&mut lat, 0.99) / 1e3,
                "ms",
            ),
        ];
        note_problems(case, &out);
        let drain_from = Instant::now();
        let already = self.rx.events();
        self.drain(server, case, out.events, Duration::from_secs(600));
        case.notes.push(format!(
            "{} of {} events were delivered while publishing; the rest took {:.1} s to \
             deliver (batch_max 1000)",
            already.min(out.events),
            out.events,
            drain_from.elapsed().as_secs_f64()
        ));
        let arrivals = self.rx.take_arrivals();
        let mut expected = vec![Vec::new(); hook.1];
        expected[hook.0] = out.accepted.iter().map(|(e, _)| *e).collect();
        case.check = merge_problems(
            std::mem::take(&mut case.check),
            self.check(&expected, &arrivals, out.events, after),
        );
        IngestRun {
            rate: out.rate(),
            round_trip,
            resources,
        }
    }

    /// End-to-end delivery to `--hooks` hooks, each event for one of them, published in
    /// arrays while the queue is kept bounded, once per `batch_max`.
    fn deliver(&mut self) -> Result<(), String> {
        let args = self.args;
        for &batch_max in &args.deliver_batch_max {
            let ceiling = self.client_ceiling(batch_max);
            if batch_max == 1 {
                self.outcome_bound();
            }
            let h = args.hooks;
            self.progress(&format!(
                "deliver: {h} hooks, batch_max {batch_max}, publishing for {} s",
                args.seconds
            ));
            let mut server = self.launch(&format!("deliver-{batch_max}"), &[])?;
            self.create_hooks(&server, &deliver_hooks(h, batch_max))?;
            let mut case = Case::new("deliver", format!("{h} hooks, batch_max {batch_max}"));
            let run = self.deliver_phase(&mut server, &mut case, h, batch_max, &[]);
            let (name, unit, target, ratio) = if batch_max == 1 {
                (
                    "deliveries/s",
                    "1/s",
                    Some(Target::at_least(15_000.0)),
                    Some(Target::at_least(0.7)),
                )
            } else if batch_max == 100 {
                (
                    "delivered events/s",
                    "1/s",
                    Some(Target::at_least(100_000.0)),
                    None,
                )
            } else {
                ("delivered events/s", "1/s", None, None)
            };
            let mut figure = Figure::new(name, run.rate, unit).ceiling(Some(ceiling));
            if let Some(t) = target {
                figure = figure.target(t);
            }
            if let Some(r) = ratio {
                figure = figure.ratio_target(r);
            }
            case.figures.push(figure);
            if batch_max == 1 {
                if let Some(note) = self.budget_note(ceiling, &run.resources) {
                    case.notes.push(note);
                }
            }
            if batch_max > 1 {
                case.figures.push(Figure::new(
                    "mean events per delivery",
                    run.events_per_delivery,
                    "events",
                ));
            }
            self.finish(case, server, run.resources);
        }
        Ok(())
    }

    /// batch_max 1's ratio target as a CPU budget: what 70 % of the client's ceiling
    /// leaves per delivery on this machine's cores, what the bare client and receiver
    /// take of it (measured with the ceiling), what publishing the event takes
    /// (ingest-batch, if it ran), and what hookd spent beyond both in this run.
    fn budget_note(&self, ceiling: f64, used: &Resources) -> Option<String> {
        let client = *self.ceilings.client_cpu_us_per_delivery.get(&1)?;
        let spent = used.all_cpu_us_per_event()?;
        if ceiling <= 0.0 {
            return None;
        }
        let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let budget = cores * 1e6 / (0.7 * ceiling);
        let mut note = format!(
            "CPU per delivery: 70 % of the client's ceiling leaves {budget:.1} µs on {cores} \
             cores; the bare client and receiver take {client:.1} µs of it (measured with \
             the ceiling); this run spent {spent:.1} µs in all (hookd, generator, receiver)"
        );
        if let Some(publish) = self.publish_cpu_us {
            note.push_str(&format!(
                "; publishing an event costs {publish:.1} µs (ingest-batch, hookd and \
                 generator, its deliveries in batches of up to 1000 included), which leaves \
                 {:.1} µs per delivery for the rest of hookd's work (claim, hand-offs, \
                 durable outcome, log), against the {:.1} µs it spent on it here",
                budget - client - publish,
                spent - client - publish
            ));
        }
        if let Some(outcome) = self.ceilings.outcome_cpu_us {
            note.push_str(&format!(
                "; recording an outcome alone, as bare SQLite does it (the delivery marked \
                 done and an attempt row, 64 per commit), takes {outcome:.1} µs"
            ));
        }
        Some(note)
    }

    /// One delivery phase on a running hookd whose hooks `0..h` take `bench.h{i}` with
    /// `batch_max`: arrays of `--batch` events spread over them, published for
    /// `--seconds` while the queue is kept bounded; the rate is end to end, from the
    /// first publish to the last arrival. Notes, problems and the check go into `case`;
    /// `after[n]` is hook `n`'s last sequence number before the phase.
    fn deliver_phase(
        &self,
        server: &mut Server,
        case: &mut Case,
        h: usize,
        batch_max: u32,
        after: &[u64],
    ) -> DeliverRun {
        let args = self.args;
        self.rx.clear();
        let bodies = spread_bodies(server.addr, &server.token, h, args.batch, "bench.h");
        // Deep enough that every hook always has a full batch waiting, shallow enough
        // that the tail after publishing stops is short.
        let window = (2 * h as u64 * u64::from(batch_max)).max(5_000);
        let rx = self.rx.clone();
        let delivered = move || rx.events();
        let accepted = AtomicU64::new(0);
        let publishing = AtomicBool::new(true);
        let phase = self.phase_start(server);
        // While publishing, sample how often hookd had nothing queued: if it often did,
        // the publishers, not delivery, set the pace.
        let (out, starved) = thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let (mut samples, mut starved) = (0u64, 0u64);
                thread::sleep(Duration::from_millis(200));
                while publishing.load(Ordering::Relaxed) {
                    let queued = accepted
                        .load(Ordering::Relaxed)
                        .saturating_sub(self.rx.events());
                    samples += 1;
                    if queued < (args.dispatchers as u64).min(h as u64) * u64::from(batch_max) {
                        starved += 1;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                starved as f64 / samples.max(1) as f64
            });
            let out = loadgen::closed_loop(&Plan {
                addr: server.addr,
                clients: args.clients,
                bodies: &bodies,
                until: Instant::now() + secs(args.seconds),
                max_events: None,
                window: Some((window, &delivered)),
                record: true,
                progress: Some(&accepted),
                enough: None,
            });
            publishing.store(false, Ordering::Relaxed);
            (out, sampler.join().unwrap_or(0.0))
        });
        note_problems(case, &out);
        if starved > 0.1 {
            case.notes.push(format!(
                "hookd's queue ran short {:.0} % of the time while publishing: this figure \
                 is bounded by how fast {} clients could publish, not by delivery",
                starved * 100.0,
                args.clients
            ));
        }
        self.drain(server, case, out.events, Duration::from_secs(600));
        let resources = self.phase_end(&phase, server, out.events);
        let counts = self.rx.counts();
        let span = counts.last_ns.saturating_sub(out.first_send_ns) as f64 / 1e9;
        case.notes.push(format!(
            "end to end: {} events published (arrays of {}, queue kept under {window}) and \
             delivered in {span:.2} s, from the first publish to the last arrival",
            out.events, args.batch
        ));
        let arrivals = self.rx.take_arrivals();
        let expected = expected_by_tag(&out.accepted, h);
        case.check = merge_problems(
            std::mem::take(&mut case.check),
            self.check(&expected, &arrivals, out.events, after),
        );
        DeliverRun {
            rate: out.events as f64 / span.max(1e-9),
            events_per_delivery: counts.events as f64 / counts.deliveries.max(1) as f64,
            resources,
        }
    }

    /// Single events at a fixed rate to one hook: publish → arrival percentiles.
    fn latency(&mut self) -> Result<(), String> {
        let args = self.args;
        let count = (args.rate * args.latency_seconds).round().max(1.0) as u64;
        self.progress(&format!(
            "latency: {} events/s for {} s ({count} events), one hook",
            args.rate, args.latency_seconds
        ));
        let mut server = self.launch("latency", &[])?;
        self.create_hooks(
            &server,
            &[HookSpec {
                event: "bench.latency".into(),
                batch_max: 1,
            }],
        )?;
        let body = loadgen::publish_body(
            server.addr,
            &server.token,
            &[("bench.latency".to_string(), 0)],
            false,
        );
        let senders = ((args.rate / 100.0).ceil() as usize).clamp(4, 64);
        // Warm-up: connections open, statements prepared; checked, not timed.
        let warm = loadgen::paced(server.addr, &body, 200.0, 20, 4);
        let mut case = Case::new("latency", format!("{} events/s", args.rate));
        self.drain(
            &mut server,
            &mut case,
            warm.sent.len() as u64,
            Duration::from_secs(60),
        );
        let base = self.rx.events();
        let phase = self.phase_start(&server);
        let out = loadgen::paced(server.addr, &body, args.rate, count, senders);
        self.drain(
            &mut server,
            &mut case,
            base + out.sent.len() as u64,
            Duration::from_secs(120),
        );
        let resources = self.phase_end(&phase, &server, out.sent.len() as u64);
        let arrivals = self.rx.take_arrivals();
        let arrived: std::collections::HashMap<u64, u64> =
            arrivals.iter().map(|a| (a.event, a.at_ns)).collect();
        let mut lat_us: Vec<u32> = out
            .sent
            .iter()
            .filter_map(|s| {
                arrived
                    .get(&s.event)
                    .map(|at| (at.saturating_sub(s.sent_ns) / 1000) as u32)
            })
            .collect();
        let mut commit: Vec<u32> = out.sent.iter().map(|s| s.commit_us).collect();
        for (label, q, target) in [
            ("publish→arrival p50", 0.50, Some(1.0)),
            ("publish→arrival p90", 0.90, None),
            ("publish→arrival p99", 0.99, Some(5.0)),
            ("publish→arrival max", 1.0, None),
        ] {
            let mut f = Figure::new(label, percentile(&mut lat_us, q) / 1e3, "ms");
            if let Some(t) = target {
                f = f.target(Target::at_most(t));
            }
            case.figures.push(f);
        }
        case.figures.push(Figure::new(
            "publish round trip p50",
            percentile(&mut commit, 0.50) / 1e3,
            "ms",
        ));
        case.figures.push(Figure::new(
            "publish round trip p99",
            percentile(&mut commit, 0.99) / 1e3,
            "ms",
        ));
        let offered = out.sent.len() as f64 / out.elapsed.as_secs_f64().max(1e-9);
        case.notes.push(format!(
            "offered {offered:.0} events/s from {senders} connections (open loop); {} \
             publishes went out over 1 ms late",
            out.late
        ));
        if out.refused + out.errors > 0 {
            case.notes.push(format!(
                "{} publishes refused, {} failed: {}",
                out.refused,
                out.errors,
                out.first_problem.clone().unwrap_or_default()
            ));
        }
        let mut fps: Vec<u64> = warm.sent.iter().map(|s| s.event).collect();
        fps.extend(out.sent.iter().map(|s| s.event));
        let published = fps.len() as u64;
        case.check = merge_problems(case.check, self.check(&[fps], &arrivals, published, &[]));
        self.finish(case, server, resources);
        Ok(())
    }

    /// One event to N hooks: time until committed, time until every hook has it.
    fn fanout(&mut self) -> Result<(), String> {
        let args = self.args;
        let ceiling = self.client_ceiling(1);
        for &n in &args.fanout {
            self.progress(&format!(
                "fanout: creating {n} hooks, then {} fan-outs (after a warm-up)",
                args.fanout_reps
            ));
            let extra = vec!["--max-hooks-per-tenant".to_string(), (n + 10).to_string()];
            let mut server = self.launch(&format!("fanout-{n}"), &extra)?;
            let setup = Instant::now();
            let specs: Vec<HookSpec> = (0..n)
                .map(|_| HookSpec {
                    event: "bench.fanout".into(),
                    batch_max: 1,
                })
                .collect();
            self.create_hooks(&server, &specs)?;
            let setup_s = setup.elapsed().as_secs_f64();
            let body = loadgen::publish_body(
                server.addr,
                &server.token,
                &[("bench.fanout".to_string(), 0)],
                false,
            );
            let mut conn = server.conn()?;
            let mut case = Case::new("fanout", format!("{n} hooks"));
            let mut events = Vec::new();
            let (mut commit_ms, mut all_ms) = (Vec::new(), Vec::new());
            let phase = self.phase_start(&server);
            for rep in 0..=args.fanout_reps {
                let base = self.rx.events();
                let sent = now_ns();
                let status = conn
                    .round_trip(&body.request)
                    .map_err(|e| format!("publishing: {e}"))?;
                let committed = now_ns();
                if status != 202 {
                    return Err(format!(
                        "publishing answered {status}: {}",
                        String::from_utf8_lossy(&conn.body)
                    ));
                }
                events.extend(ids_in(&conn.body).map(fingerprint));
                let limit = Duration::from_secs(60).max(Duration::from_millis(20 * n as u64));
                if !self.wait_events(&mut server, base + n as u64, limit) {
                    case.check.problems.push(format!(
                        "fan-out {rep}: only {} of {n} deliveries arrived",
                        self.rx.events() - base
                    ));
                    break;
                }
                let last = self.rx.counts().last_ns;
                if rep > 0 {
                    commit_ms.push((committed - sent) as f64 / 1e6);
                    all_ms.push(last.saturating_sub(sent) as f64 / 1e6);
                }
                // Each fan-out starts from a settled engine: the outcomes of the last
                // one are recorded (hookd's own gauge says so), so its commit does not
                // share a group with them.
                if let Err(e) = settle(&mut conn, Duration::from_secs(30)) {
                    case.check.problems.push(format!("fan-out {rep}: {e}"));
                    break;
                }
            }
            let resources = self.phase_end(&phase, &server, (n * (args.fanout_reps + 1)) as u64);
            let (commit_target, all_target) = match n {
                100 => (None, Some(5.0)),
                10_000 => (Some(100.0), Some(2000.0)),
                _ => (None, None),
            };
            let commit_med = median(&commit_ms);
            let all_med = median(&all_ms);
            let mut f = Figure::new("committed (median)", commit_med, "ms");
            if let Some(t) = commit_target {
                f = f.target(Target::at_most(t));
            }
            case.figures.push(f);
            let mut f = Figure::new("all arrived (median)", all_med, "ms");
            if let Some(t) = all_target {
                f = f.target(Target::at_most(t));
            }
            case.figures.push(f);
            case.figures.push(
                Figure::new(
                    "deliveries/s in the burst",
                    n as f64 / (all_med / 1e3).max(1e-9),
                    "1/s",
                )
                .ceiling(Some(ceiling)),
            );
            case.notes.push(format!(
                "{} fan-outs after a warm-up: committed {} ms, all arrived {} ms (min–max); \
                 creating the {n} hooks took {setup_s:.1} s",
                commit_ms.len(),
                range(&commit_ms),
                range(&all_ms)
            ));
            let arrivals = self.rx.take_arrivals();
            let expected = vec![events.clone(); n];
            case.check = merge_problems(
                case.check,
                self.check(&expected, &arrivals, events.len() as u64, &[]),
            );
            self.finish(case, server, resources);
        }
        Ok(())
    }

    /// Events queued while every hook is inactive (its receiver answered 503 and
    /// `--disable-after 1` disabled it), then released: drain rate and peak RSS.
    fn backlog(&mut self) -> Result<(), String> {
        let args = self.args;
        let ceiling = self.client_ceiling(1);
        let h = args.hooks;
        let (target_n, budget) = self.backlog_budget();
        self.progress(&format!(
            "backlog: up to {target_n} events for {h} hooks while they are inactive, then released"
        ));
        let extra = vec!["--disable-after".to_string(), "1".to_string()];
        let mut server = self.launch("backlog", &extra)?;
        let specs: Vec<HookSpec> = (0..h)
            .map(|i| HookSpec {
                event: format!("bench.b{i}"),
                batch_max: 1,
            })
            .collect();
        let hooks = self.create_hooks(&server, &specs)?;
        let mut case = Case::new("backlog", String::new());

        // Receivers down: one failed delivery per hook makes it inactive.
        self.rx.set_mode(Mode::Unavailable);
        let mut conn = server.conn()?;
        let mut accepted: Vec<(u64, u32)> = Vec::new();
        let firsts = spread_bodies(server.addr, &server.token, h, args.batch.min(h), "bench.b");
        for body in firsts.iter().take(h.div_ceil(args.batch.min(h))) {
            let status = conn
                .round_trip(&body.request)
                .map_err(|e| format!("publishing: {e}"))?;
            if status != 202 {
                return Err(format!("publishing answered {status}"));
            }
            accepted.extend(
                ids_in(&conn.body)
                    .map(fingerprint)
                    .zip(body.tags.iter().copied()),
            );
        }
        self.wait_inactive(&mut conn, &server, &hooks)?;

        // The backlog.
        let per_body = (args.batch as u64).min(target_n.max(1)) as usize;
        let bodies = spread_bodies(server.addr, &server.token, h, per_body, "bench.b");
        let phase = self.phase_start(&server);
        let started = Instant::now();
        // With a time budget, publishing stops once what is queued would take the rest
        // of it to drain, at the deliver rate measured earlier in the run (or, without
        // one, at the publish rate so far: draining is rarely faster than queueing).
        let enough = |queued: u64| -> bool {
            let Some((end, drain_rate)) = budget else {
                return false;
            };
            let spent = started.elapsed().as_secs_f64();
            let rate = drain_rate.unwrap_or(queued as f64 / spent.max(0.1));
            Instant::now() + secs(queued as f64 / rate.max(1.0)) >= end
        };
        let out = loadgen::closed_loop(&Plan {
            addr: server.addr,
            clients: args.clients,
            bodies: &bodies,
            until: Instant::now() + Duration::from_secs(24 * 3600),
            max_events: Some(target_n),
            window: None,
            record: true,
            progress: None,
            enough: Some(&enough),
        });
        note_problems(&mut case, &out);
        let publish_res = self.phase_end(&phase, &server, out.events);
        let after_publish = server.stats();
        accepted.extend(out.accepted.iter().copied());
        let n = out.events;
        case.case = format!("{n} events, {h} hooks");
        if n < target_n {
            let msg = format!(
                "backlog reduced from {target_n} to {n} events so that the whole run fits in \
                 {:.0} s (--budget); `--backlog {target_n}` forces the full size",
                args.budget
            );
            self.progress(&msg);
            case.notes.push(msg);
        }

        // Receivers back: activate every hook (the handshake runs again).
        self.rx.set_mode(Mode::Accept);
        let released = now_ns();
        let phase = self.phase_start(&server);
        self.activate(&server, &hooks)?;
        let total = accepted.len() as u64;
        self.drain(&mut server, &mut case, total, Duration::from_secs(3600));
        let resources = self.phase_end(&phase, &server, total);
        let counts = self.rx.counts();
        case.notes.push(format!(
            "the receiver refused {} deliveries while down and answered {} handshakes on activation",
            counts.refused, counts.handshakes
        ));
        let drain_s = counts.last_ns.saturating_sub(released) as f64 / 1e9;
        let drain_rate = total as f64 / drain_s.max(1e-9);
        let deliver_rate = self
            .cases
            .iter()
            .find(|c| c.scenario == "deliver" && c.case.ends_with("batch_max 1"))
            .and_then(|c| c.figure("deliveries/s"));
        let mut f = Figure::new("drain deliveries/s", drain_rate, "1/s").ceiling(Some(ceiling));
        if let Some(d) = deliver_rate {
            f = f.target(Target::at_least(d));
        }
        case.figures.push(f);
        case.figures.push(Figure::new(
            "publish events/s (backlog build-up)",
            out.rate(),
            "1/s",
        ));
        let peak = server.stats().peak_rss_mb;
        case.figures
            .push(Figure::new("hookd peak RSS", peak, "MB").target(Target::at_most(100.0)));
        case.notes.push(format!(
            "RSS {:.1} MB with the backlog queued; drained {total} deliveries in {drain_s:.1} s; \
             the build-up used {:.1} s of hookd CPU{}",
            after_publish.rss_mb,
            publish_res.phase_cpu_s,
            if deliver_rate.is_none() {
                " (the drain-rate target is the deliver scenario's rate: run it too to compare)"
            } else {
                ""
            }
        ));
        let arrivals = self.rx.take_arrivals();
        let expected = expected_by_tag(&accepted, h);
        case.check = merge_problems(case.check, self.check(&expected, &arrivals, total, &[]));
        self.finish(case, server, resources);
        Ok(())
    }

    /// How many events the backlog queues, and the time budget it must fit in: the full
    /// 1,000,000 and no budget when `--backlog` is given; otherwise up to 1,000,000 and
    /// whatever is left of `--budget` once the outbox's share is kept back (when the
    /// backlog must end, and the drain rate measured by the deliver scenario, if it ran).
    fn backlog_budget(&self) -> (u64, Option<(Instant, Option<f64>)>) {
        if let Some(n) = self.args.backlog {
            return (n, None);
        }
        // Set-up, the wait for inactive hooks and the report take a few seconds; the
        // outbox, when it runs after, needs its share.
        let left = (self.args.budget
            - self.started.elapsed().as_secs_f64()
            - 10.0
            - self.outbox_reserve())
        .max(20.0);
        let drain = self
            .cases
            .iter()
            .find(|c| c.scenario == "deliver" && c.case.ends_with("batch_max 1"))
            .and_then(|c| c.figure("deliveries/s"));
        (BACKLOG_DEFAULT, Some((Instant::now() + secs(left), drain)))
    }

    /// Seconds the outbox scenario takes besides its fill, when it runs: hook set-up,
    /// two starts and a stop, and four load phases with their drains; plus, when its
    /// size is fitted to the budget, the least time its fill is given.
    fn outbox_reserve(&self) -> f64 {
        if !self.selected.contains(&Scenario::Outbox) {
            return 0.0;
        }
        let fill = if self.args.outbox_rows.is_none() {
            OUTBOX_MIN_FILL_S
        } else {
            0.0
        };
        self.grown_phases_s() * 2.0 + 5.0 + fill
    }

    /// Seconds of one ingest and one delivery phase, their drains included.
    fn grown_phases_s(&self) -> f64 {
        2.0 * (self.args.seconds + 3.0)
    }

    /// Ingest and delivery on an empty database, then on the same database once it
    /// holds `--outbox-rows` delivered rows more: hookd is stopped cleanly, the file is
    /// filled through `store::fill` (no server holds it then), and hookd starts again on
    /// it. Each grown figure must be at least 80 % of the empty one.
    fn outbox(&mut self) -> Result<(), String> {
        let args = self.args;
        let h = args.hooks;
        let ingest_ceiling = self.generator_ceiling(1, args.clients);
        let deliver_ceiling = self.client_ceiling(1);
        let target_rows = args.outbox_rows.unwrap_or(OUTBOX_DEFAULT);
        self.progress(&format!(
            "outbox: ingest ({} clients, single events) and deliver ({h} hooks, batch_max 1) \
             on an empty database, {} s each",
            args.clients, args.seconds
        ));
        let mut server = self.launch("outbox", &[])?;
        // Hooks 0..h deliver (as in `deliver`), hook h takes the ingest phases' events.
        let mut specs = deliver_hooks(h, 1);
        specs.push(ingest_hook());
        let hooks = self.create_hooks(&server, &specs)?;
        let fresh = vec![0; h + 1];
        let ceilings = [ingest_ceiling, deliver_ceiling];
        let empty = self.outbox_phases(&mut server, "empty database", &fresh, ceilings, None)?;

        // hookd stopped: the file is grown, its hooks' sequences moved on.
        let dir = server.dir().to_path_buf();
        let db = server.db();
        server.shutdown(SHUTDOWN_LIMIT)?;
        let ids: Vec<String> = hooks.iter().map(|h| h.id.clone()).collect();
        let probe = target_rows.min(OUTBOX_PROBE);
        self.progress(&format!(
            "outbox: hookd stopped; filling its database with {} delivered rows{}",
            thousands(target_rows),
            if args.outbox_rows.is_none() {
                " (at most: fitted to --budget from the rate of the first rows)"
            } else {
                ""
            }
        ));
        let fill = |rows: u64| {
            crate::store::fill::fill_delivered(&db, &ids, rows)
                .map_err(|e| format!("filling {}: {e}", db.display()))
        };
        let first = fill(probe)?;
        let probe_rate = probe as f64 / first.elapsed.as_secs_f64().max(1e-9);
        let rows = if args.outbox_rows.is_some() {
            target_rows
        } else {
            // Later rows go in more slowly than the first (deeper B-trees, more to write
            // back): the rest is sized at OUTBOX_RATE_FACTOR of the first rows' rate.
            let rate = probe_rate * OUTBOX_RATE_FACTOR;
            let left = args.budget - self.started.elapsed().as_secs_f64() - self.grown_phases_s();
            target_rows.min(probe + (rate * left.max(0.0)) as u64)
        };
        let rest = if rows > probe {
            Some(fill(rows - probe)?)
        } else {
            None
        };
        let fill_s =
            first.elapsed.as_secs_f64() + rest.as_ref().map_or(0.0, |r| r.elapsed.as_secs_f64());
        let last = rest.as_ref().unwrap_or(&first);
        let after = last.last_seq.clone();
        let db_mb = last.db_bytes as f64 / 1e6;
        let label = format!("{} delivered rows", thousands(rows));
        self.progress(&format!(
            "outbox: filled {label} in {fill_s:.1} s ({:.0} rows/s; the first {} at \
             {probe_rate:.0} rows/s); the database is {db_mb:.0} MB; starting hookd on it",
            rows as f64 / fill_s.max(1e-9),
            thousands(probe)
        ));
        let mut server = self.relaunch(&dir, &[])?;
        let mut case = Case::new("outbox", format!("fill, {label}"));
        case.figures.push(Figure::new(
            "fill rate",
            rows as f64 / fill_s.max(1e-9),
            "rows/s",
        ));
        case.figures.push(Figure::new("fill time", fill_s, "s"));
        case.figures.push(Figure::new("database file", db_mb, "MB"));
        case.figures.push(Figure::new(
            "start-up on the grown database",
            server.startup.as_secs_f64() * 1e3,
            "ms",
        ));
        case.notes.push(format!(
            "each row is an event, its delivery (delivered) and one attempt (204), spread \
             over the {} hooks, dated within the last hour; the first {} rows filled \
             at {probe_rate:.0} rows/s; the database also holds the rows of the \
             empty-database phases",
            h + 1,
            thousands(probe)
        ));
        if rows < target_rows {
            let msg = format!(
                "outbox reduced from {} to {} rows so that the whole run fits in {:.0} s \
                 (--budget); `--outbox-rows {target_rows}` forces the full size",
                thousands(target_rows),
                thousands(rows),
                args.budget
            );
            self.progress(&msg);
            case.notes.push(msg);
        }
        self.file(case, server.startup, server.stats(), Resources::default());

        self.progress(&format!("outbox: ingest and deliver again, on {label}"));
        self.outbox_phases(&mut server, &label, &after, ceilings, Some(empty))?;
        Ok(())
    }

    /// The outbox's ingest phase (hook `--hooks`, batch_max 1000, as `ingest`) and
    /// delivery phase (hooks `0..--hooks`, batch_max 1, as `deliver`), each filed as a
    /// case named after `state`, with the bare `ceilings` of each. With `empty` (what
    /// they measured on the empty database), each rate is compared with the empty one:
    /// the target is at least 80 % of it.
    fn outbox_phases(
        &mut self,
        server: &mut Server,
        state: &str,
        after: &[u64],
        ceilings: [f64; 2],
        empty: Option<[Rate; 2]>,
    ) -> Result<[Rate; 2], String> {
        let h = self.args.hooks;
        let mut case = Case::new("outbox", format!("ingest, {state}"));
        let ingest = self.ingest_phase(server, &mut case, 1, (h, h + 1), after);
        let ingest_rate = Rate {
            value: ingest.rate,
            cpu_us: ingest.resources.cpu_us_per_event,
        };
        let before = empty.map(|e| e[0]);
        compare_rate(
            &mut case,
            "accepted events/s",
            ingest_rate,
            ceilings[0],
            before,
        );
        case.figures.extend(ingest.round_trip);
        self.file(case, server.startup, server.stats(), ingest.resources);
        if !server.alive() {
            return Err(format!("hookd died:\n{}", server.log_tail()));
        }

        let mut case = Case::new("outbox", format!("deliver, {state}"));
        let deliver = self.deliver_phase(server, &mut case, h, 1, after);
        let deliver_rate = Rate {
            value: deliver.rate,
            cpu_us: deliver.resources.cpu_us_per_event,
        };
        let before = empty.map(|e| e[1]);
        compare_rate(&mut case, "deliveries/s", deliver_rate, ceilings[1], before);
        self.file(case, server.startup, server.stats(), deliver.resources);
        if !server.alive() {
            return Err(format!("hookd died:\n{}", server.log_tail()));
        }
        Ok([ingest_rate, deliver_rate])
    }

    /// Waits until every hook is inactive.
    fn wait_inactive(
        &self,
        conn: &mut Conn,
        server: &Server,
        hooks: &[Hook],
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let wanted: std::collections::HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
        loop {
            let mut inactive = 0;
            let mut after: Option<String> = None;
            loop {
                let path = match &after {
                    Some(c) => format!(
                        "/v1/hooks?limit=500&after={}",
                        url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
                    ),
                    None => "/v1/hooks?limit=500".to_string(),
                };
                let (status, page) = conn
                    .call("GET", &path, &server.token, None)
                    .map_err(|e| format!("listing hooks: {e}"))?;
                if status != 200 {
                    return Err(format!("listing hooks answered {status}: {page}"));
                }
                for hook in page["data"].as_array().into_iter().flatten() {
                    if hook["status"] == "inactive"
                        && wanted.contains(hook["id"].as_str().unwrap_or(""))
                    {
                        inactive += 1;
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            if inactive == hooks.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "only {inactive} of {} hooks became inactive after their receiver answered 503",
                    hooks.len()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Activates every hook, from several connections.
    fn activate(&self, server: &Server, hooks: &[Hook]) -> Result<(), String> {
        let failure: Mutex<Option<String>> = Mutex::new(None);
        let workers = SETUP_CONNECTIONS.min(hooks.len()).max(1);
        thread::scope(|scope| {
            for w in 0..workers {
                let failure = &failure;
                scope.spawn(move || {
                    let mut conn = match server.conn() {
                        Ok(c) => c,
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                    };
                    for hook in hooks.iter().skip(w).step_by(workers) {
                        let path = format!("/v1/hooks/{}/activate", hook.id);
                        match conn.call("POST", &path, &server.token, None) {
                            Ok((200, _)) => {}
                            other => {
                                *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(format!("activating {}: {}", hook.id, describe(other)));
                                return;
                            }
                        }
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Array publishes whose events go round-robin to `hooks` hooks (`{prefix}{i}` is hook
/// `i`'s event type; the tag of each event is its hook). Enough bodies that cycling
/// through them gives every hook the same share.
fn spread_bodies(
    addr: SocketAddr,
    token: &str,
    hooks: usize,
    per_body: usize,
    prefix: &str,
) -> Vec<Body> {
    let cycle = hooks / gcd(hooks, per_body);
    (0..cycle.min(1000))
        .map(|b| {
            let events: Vec<(String, u32)> = (0..per_body)
                .map(|j| {
                    let hook = (b * per_body + j) % hooks;
                    (format!("{prefix}{hook}"), hook as u32)
                })
                .collect();
            loadgen::publish_body(addr, token, &events, true)
        })
        .collect()
}

/// Waits until hookd's `hookd_outbox_pending` gauge (GET /metrics) reads 0.
fn settle(conn: &mut Conn, limit: Duration) -> Result<(), String> {
    const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: hookd\r\n\r\n";
    let deadline = Instant::now() + limit;
    loop {
        let status = conn
            .round_trip(REQUEST)
            .map_err(|e| format!("reading /metrics: {e}"))?;
        let text = String::from_utf8_lossy(&conn.body);
        let pending = text
            .lines()
            .find_map(|l| l.strip_prefix("hookd_outbox_pending "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        match (status, pending) {
            (200, Some(0)) => return Ok(()),
            (200, Some(_)) => {}
            _ => {
                return Err(format!(
                    "/metrics answered {status} without the outbox gauge"
                ))
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("deliveries still pending after {limit:?}"));
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// The accepted events of each hook, by tag.
fn expected_by_tag(accepted: &[(u64, u32)], hooks: usize) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new(); hooks];
    for (event, tag) in accepted {
        if let Some(list) = out.get_mut(*tag as usize) {
            list.push(*event);
        }
    }
    out
}

fn note_problems(case: &mut Case, out: &loadgen::Outcome) {
    if out.refused + out.errors > 0 {
        case.notes.push(format!(
            "{} of {} publishes were refused and {} failed on the wire; first: {}",
            out.refused,
            out.requests,
            out.errors,
            out.first_problem.clone().unwrap_or_default()
        ));
    }
}

/// `base` with the problems of `more` added (the counts come from `more`).
fn merge_problems(base: Check, mut more: Check) -> Check {
    let mut problems = base.problems;
    problems.append(&mut more.problems);
    more.problems = problems;
    more
}

fn describe(r: std::io::Result<(u16, Value)>) -> String {
    match r {
        Ok((status, body)) => format!("answered {status}: {body}"),
        Err(e) => format!("failed: {e}"),
    }
}

/// A count for people: `2,000`, `10,000,000`.
fn thousands(n: u64) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        num(n as f64)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// The `q` quantile (0..=1, nearest rank) of `v`, as f64; sorts `v`.
fn percentile(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    f64::from(v[rank - 1])
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        "-".into()
    } else {
        format!("{min:.1}–{max:.1}")
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut v, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn spread_bodies_give_every_hook_the_same_share() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let bodies = spread_bodies(addr, "t", 3, 100, "x.h");
        assert_eq!(bodies.len(), 3);
        let mut per_hook = [0; 3];
        for b in &bodies {
            for t in &b.tags {
                per_hook[*t as usize] += 1;
            }
        }
        assert_eq!(per_hook, [100, 100, 100]);
        assert_eq!(spread_bodies(addr, "t", 100, 100, "x.h").len(), 1);
    }

    #[test]
    fn counts_are_written_with_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2000), "2,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }
}
