//! Results: what each case measured, against which target and which bare ceiling, what
//! hookd cost, and whether every delivery arrived intact. Printed as a table, or as JSON
//! with `--json`. Pure formatting: nothing here measures.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::receiver::Arrival;

/// A target from issue 5: the figure must be at least / at most this.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub op: Op,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

impl Target {
    pub fn at_least(value: f64) -> Target {
        Target {
            op: Op::AtLeast,
            value,
        }
    }

    pub fn at_most(value: f64) -> Target {
        Target {
            op: Op::AtMost,
            value,
        }
    }

    pub fn met(&self, v: f64) -> bool {
        match self.op {
            Op::AtLeast => v >= self.value,
            Op::AtMost => v <= self.value,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// The bare ceiling for the same work without hookd, in the same unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<f64>,
    /// `value / ceiling`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// A target on the ratio (e.g. ≥ 60 % of the generator's ceiling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_target: Option<Target>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_met: Option<bool>,
}

impl Figure {
    pub fn new(name: &str, value: f64, unit: &'static str) -> Figure {
        Figure {
            name: name.to_string(),
            value,
            unit,
            target: None,
            met: None,
            ceiling: None,
            ratio: None,
            ratio_target: None,
            ratio_met: None,
        }
    }

    pub fn target(mut self, t: Target) -> Figure {
        self.met = Some(t.met(self.value));
        self.target = Some(t);
        self
    }

    pub fn ceiling(mut self, ceiling: Option<f64>) -> Figure {
        if let Some(c) = ceiling.filter(|c| *c > 0.0) {
            self.ceiling = Some(c);
            self.ratio = Some(self.value / c);
        }
        self
    }

    pub fn ratio_target(mut self, t: Target) -> Figure {
        self.ratio_met = self.ratio.map(|r| t.met(r));
        self.ratio_target = Some(t);
        self
    }

    /// Whether every target on this figure is met (`None`: it has none).
    pub fn verdict(&self) -> Option<bool> {
        match (self.met, self.ratio_met) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(true) && b.unwrap_or(true)),
        }
    }
}

/// What hookd cost during one case.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Resources {
    pub startup_ms: f64,
    pub peak_rss_mb: f64,
    /// CPU seconds over the child's whole life (set-up included).
    pub cpu_s: f64,
    /// CPU seconds during the measured phase only.
    pub phase_cpu_s: f64,
    /// `phase_cpu_s` per event (or delivery) of the phase, microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_event: Option<f64>,
    /// CPU seconds the benchmark itself (generator + receiver) used in the phase.
    pub bench_phase_cpu_s: f64,
    /// Length of the measured phase.
    pub phase_s: f64,
}

impl Resources {
    /// hookd's and the benchmark's CPU together per event of the phase, microseconds:
    /// what the whole machine spent on each.
    pub fn all_cpu_us_per_event(&self) -> Option<f64> {
        let hookd = self.cpu_us_per_event?;
        (self.phase_cpu_s > 0.0)
            .then(|| hookd * (self.phase_cpu_s + self.bench_phase_cpu_s) / self.phase_cpu_s)
    }
}

/// Whether every delivery arrived, once, intact.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    /// Events accepted by hookd.
    pub published: u64,
    /// (hook, event) pairs that must arrive.
    pub expected: u64,
    /// Events received (duplicates included).
    pub arrived: u64,
    /// Expected pairs that never arrived.
    pub lost: u64,
    /// Pairs that arrived more than once (at least once is allowed; reported).
    pub duplicates: u64,
    /// Missing numbers in a hook's `sequence` run below its highest.
    pub sequence_gaps: u64,
    /// Times a hook's sequence went backwards in arrival order, or back to a number at
    /// or below the one it had before (a number given out twice).
    pub out_of_order: u64,
    /// Arrivals of events not published by this run as far as it knows (a publish
    /// whose answer was lost and was sent again).
    pub unexpected: u64,
    pub bad_signatures: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.bad_signatures == 0 && self.problems.is_empty()
    }

    /// Compares what arrived with `expected[hook]`: the fingerprints of the events each
    /// registered hook must receive. `after[hook]` is the last sequence number the hook
    /// had before (missing: 0), so a gap is a number missing between it and the highest
    /// that arrived.
    pub fn compare(expected: &[Vec<u64>], arrivals: &[Arrival], after: &[u64]) -> Check {
        let mut check = Check {
            expected: expected.iter().map(|e| e.len() as u64).sum(),
            arrived: arrivals.len() as u64,
            ..Check::default()
        };
        let mut by_hook: Vec<Vec<&Arrival>> = vec![Vec::new(); expected.len()];
        for a in arrivals {
            match by_hook.get_mut(a.hook as usize) {
                Some(list) => list.push(a),
                None => check.unexpected += 1,
            }
        }
        for (n, (want, got)) in expected.iter().zip(by_hook).enumerate() {
            let base = after.get(n).copied().unwrap_or(0);
            let mut prev = 0;
            for a in &got {
                if a.seq < prev {
                    check.out_of_order += 1;
                }
                prev = a.seq;
            }
            let mut seqs: Vec<u64> = got.iter().map(|a| a.seq).collect();
            seqs.sort_unstable();
            seqs.dedup();
            if let Some(&max) = seqs.last() {
                // Numbers at or below the base were given out before this run.
                let reused = seqs.iter().take_while(|s| **s <= base).count() as u64;
                check.out_of_order += reused;
                // Numbers above the base that never arrived.
                check.sequence_gaps += max.saturating_sub(base) - (seqs.len() as u64 - reused);
            }
            let mut want = want.clone();
            want.sort_unstable();
            let mut have: Vec<u64> = got.iter().map(|a| a.event).collect();
            have.sort_unstable();
            let before = have.len();
            have.dedup();
            check.duplicates += (before - have.len()) as u64;
            // Merge the two sorted lists.
            let (mut i, mut j) = (0, 0);
            while i < want.len() || j < have.len() {
                match (want.get(i), have.get(j)) {
                    (Some(w), Some(h)) if w == h => {
                        i += 1;
                        j += 1;
                    }
                    (Some(w), Some(h)) if w < h => {
                        check.lost += 1;
                        i += 1;
                    }
                    (Some(_), None) => {
                        check.lost += 1;
                        i += 1;
                    }
                    _ => {
                        check.unexpected += 1;
                        j += 1;
                    }
                }
            }
        }
        check
    }
}

/// One run of one scenario configuration, against one fresh hookd.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub scenario: &'static str,
    pub case: String,
    pub figures: Vec<Figure>,
    pub hookd: Resources,
    pub check: Check,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Case {
    pub fn new(scenario: &'static str, case: impl Into<String>) -> Case {
        Case {
            scenario,
            case: case.into(),
            figures: Vec::new(),
            hookd: Resources::default(),
            check: Check::default(),
            notes: Vec::new(),
        }
    }

    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }
}

/// The bare ceilings measured in this run, keyed by events per request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceilings {
    /// The generator against the no-op server, in events per second: key 1 is
    /// single-event publishes, larger keys are array publishes of that many events.
    pub generator_events_per_s: BTreeMap<usize, f64>,
    /// hookd's delivery client (its ureq agent and send path) against the receiver,
    /// without hookd, in events per second: key 1 is one event per delivery (so
    /// deliveries per second), larger keys are batched bodies of that many events.
    pub client_events_per_s: BTreeMap<u32, f64>,
    /// The benchmark's CPU (the delivery client and the receiver together) per delivery
    /// while measuring `client_events_per_s`, microseconds, keyed the same way.
    pub client_cpu_us_per_delivery: BTreeMap<u32, f64>,
    /// The generator against hookd's own HTTP server doing no work (`bench::bounds`),
    /// single-event publishes per second: the bound the HTTP stack puts on ingest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_stack_events_per_s: Option<f64>,
    /// The generator against hookd's design doing none of hookd's work
    /// (`bench::bounds::Stack::bare`: its HTTP server, one writer, group commit of bare
    /// rows), single-event publishes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bare_design_events_per_s: Option<f64>,
    /// Durable commits per second of one SQLite file on this disk (`bench::bounds`),
    /// keyed by publish-sized rows per commit (`store::probe::durable_commits`).
    pub durable_commits_per_s: BTreeMap<usize, f64>,
    /// CPU per outcome of the least a durable delivery log records per attempt
    /// (`store::probe::outcome_cpu_us`), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_cpu_us: Option<f64>,
}

/// Everything a run produced.
pub struct Run {
    pub cases: Vec<Case>,
    pub ceilings: Ceilings,
    pub scenarios: Vec<&'static str>,
    pub elapsed_s: f64,
    pub notes: Vec<String>,
    pub command: String,
    pub cpus: usize,
    pub dir: String,
    /// `/proc/loadavg` before and after the run: other work on the machine skews every
    /// figure, and this shows whether there was any.
    pub load: (String, String),
}

impl Run {
    pub fn lost(&self) -> u64 {
        self.cases.iter().map(|c| c.check.lost).sum()
    }

    pub fn bad_signatures(&self) -> u64 {
        self.cases.iter().map(|c| c.check.bad_signatures).sum()
    }

    pub fn ok(&self) -> bool {
        self.cases.iter().all(|c| c.check.ok())
    }

    pub fn json(&self) -> Value {
        let mut scenarios = Map::new();
        for name in &self.scenarios {
            let cases: Vec<&Case> = self.cases.iter().filter(|c| c.scenario == *name).collect();
            scenarios.insert(name.to_string(), json!({ "cases": cases }));
        }
        json!({
            "hookd_version": env!("CARGO_PKG_VERSION"),
            "command": self.command,
            "machine": {"cpus": self.cpus, "os": std::env::consts::OS, "arch": std::env::consts::ARCH},
            "database_dir": self.dir,
            "loadavg_before": self.load.0,
            "loadavg_after": self.load.1,
            "elapsed_s": round(self.elapsed_s, 1),
            "ok": self.ok(),
            "lost": self.lost(),
            "bad_signatures": self.bad_signatures(),
            "ceilings": self.ceilings,
            "scenarios": scenarios,
            "notes": self.notes,
        })
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "hookd bench {} — {} CPUs, databases under {}, {:.0} s; load average {} before, {} after\n\n",
            env!("CARGO_PKG_VERSION"),
            self.cpus,
            self.dir,
            self.elapsed_s,
            self.load.0,
            self.load.1
        ));
        let header = [
            "scenario",
            "case",
            "figure",
            "value",
            "target",
            "met",
            "bare ceiling",
            "ratio",
        ];
        let mut rows = vec![header.map(String::from).to_vec()];
        for c in &self.cases {
            for f in &c.figures {
                let target = f
                    .target
                    .map(|t| format!("{} {}", op(t.op), num(t.value)))
                    .unwrap_or_default();
                let ratio = match (f.ratio, f.ratio_target) {
                    (Some(r), Some(t)) => {
                        format!("{:.0} % ({} {:.0} %)", r * 100.0, op(t.op), t.value * 100.0)
                    }
                    (Some(r), None) => format!("{:.0} %", r * 100.0),
                    _ => String::new(),
                };
                rows.push(vec![
                    c.scenario.to_string(),
                    c.case.clone(),
                    format!("{} ({})", f.name, f.unit),
                    num(f.value),
                    target,
                    match f.verdict() {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                    f.ceiling.map(num).unwrap_or_default(),
                    ratio,
                ]);
            }
        }
        out.push_str(&grid(&rows));
        out.push('\n');
        let header = [
            "scenario",
            "case",
            "hookd peak RSS",
            "hookd CPU (phase)",
            "CPU/event",
            "bench CPU (phase)",
            "phase",
            "arrived/expected",
            "lost",
            "bad sig",
            "dup",
        ];
        let mut rows = vec![header.map(String::from).to_vec()];
        for c in &self.cases {
            let r = &c.hookd;
            rows.push(vec![
                c.scenario.to_string(),
                c.case.clone(),
                format!("{:.1} MB", r.peak_rss_mb),
                format!("{:.2} s ({:.2} s)", r.cpu_s, r.phase_cpu_s),
                r.cpu_us_per_event
                    .map(|u| format!("{u:.1} µs"))
                    .unwrap_or_default(),
                format!("{:.2} s", r.bench_phase_cpu_s),
                format!("{:.2} s", r.phase_s),
                format!("{}/{}", c.check.arrived, c.check.expected),
                c.check.lost.to_string(),
                c.check.bad_signatures.to_string(),
                c.check.duplicates.to_string(),
            ]);
        }
        out.push_str(&grid(&rows));
        let mut notes: Vec<String> = self.notes.clone();
        for c in &self.cases {
            for n in &c.notes {
                notes.push(format!("{} {}: {n}", c.scenario, c.case));
            }
            for p in &c.check.problems {
                notes.push(format!("{} {}: PROBLEM: {p}", c.scenario, c.case));
            }
        }
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out.push_str(&format!(
            "\nresult: {} ({} deliveries lost, {} bad signatures)\n",
            if self.ok() { "ok" } else { "FAILED" },
            self.lost(),
            self.bad_signatures()
        ));
        out
    }
}

fn op(o: Op) -> &'static str {
    match o {
        Op::AtLeast => "≥",
        Op::AtMost => "≤",
    }
}

/// A figure for people: thousands separated, a sensible number of decimals.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn round(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

fn grid(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(hook: u32, seq: u64, event: u64) -> Arrival {
        Arrival {
            hook,
            seq,
            event,
            at_ns: 0,
        }
    }

    #[test]
    fn a_complete_run_checks_out() {
        let expected = vec![vec![10, 11], vec![10]];
        let got = [arrival(0, 1, 10), arrival(1, 1, 10), arrival(0, 2, 11)];
        let c = Check::compare(&expected, &got, &[]);
        assert!(c.ok());
        assert_eq!((c.expected, c.arrived, c.lost, c.duplicates), (3, 3, 0, 0));
        assert_eq!((c.sequence_gaps, c.out_of_order, c.unexpected), (0, 0, 0));
    }

    #[test]
    fn loss_gaps_duplicates_and_strangers_are_counted() {
        let expected = vec![vec![1, 2, 3]];
        let got = [
            arrival(0, 1, 1),
            arrival(0, 3, 3),
            arrival(0, 1, 1),
            arrival(0, 4, 99),
            arrival(7, 1, 5),
        ];
        let c = Check::compare(&expected, &got, &[]);
        assert_eq!(c.lost, 1, "event 2 never came");
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.sequence_gaps, 1, "sequence 2 is missing below 4");
        assert_eq!(c.out_of_order, 1);
        assert_eq!(c.unexpected, 2, "event 99 and the unknown hook");
        assert!(!c.ok());
    }

    #[test]
    fn sequences_may_start_after_a_base() {
        let expected = vec![vec![1, 2], vec![3]];
        let got = [arrival(0, 101, 1), arrival(0, 103, 2), arrival(1, 8, 3)];
        let c = Check::compare(&expected, &got, &[100, 7]);
        assert_eq!((c.lost, c.sequence_gaps), (0, 1), "102 is missing");
        let c = Check::compare(&expected, &got, &[]);
        assert_eq!(c.sequence_gaps, 101 + 7, "counted from 1 without a base");
        // Numbering that started over instead of going on from the base.
        let restarted = [arrival(0, 1, 1), arrival(0, 2, 2), arrival(1, 1, 3)];
        let c = Check::compare(&expected, &restarted, &[100, 7]);
        assert_eq!((c.out_of_order, c.sequence_gaps), (3, 0), "{c:?}");
    }

    #[test]
    fn figures_compare_with_targets_and_ceilings() {
        let f = Figure::new("events/s", 12_000.0, "1/s")
            .target(Target::at_least(20_000.0))
            .ceiling(Some(30_000.0))
            .ratio_target(Target::at_least(0.6));
        assert_eq!(f.met, Some(false));
        assert_eq!(f.ratio, Some(0.4));
        assert_eq!(f.verdict(), Some(false));
        assert_eq!(num(1_234_567.0), "1,234,567");
        assert_eq!(num(2.5), "2.50");
    }
}
