//! Keeps `hookd bench` working: every scenario at tiny sizes, checked for correctness
//! (it exits 0, nothing lost, every signature verified, every scenario reported) and
//! never for speed — this runs on whatever machine runs the tests, debug build included.

use std::process::Command;

use serde_json::Value;

const SCENARIOS: &[&str] = &[
    "idle",
    "ingest",
    "ingest-batch",
    "deliver",
    "latency",
    "fanout",
    "backlog",
    "outbox",
];

#[test]
fn every_scenario_runs_at_tiny_sizes_and_loses_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args([
            "bench",
            "--json",
            "--seconds",
            "0.3",
            "--ceiling-seconds",
            "0.2",
            "--clients",
            "2",
            "--batch",
            "10",
            "--hooks",
            "3",
            "--deliver-batch-max",
            "1,5",
            "--rate",
            "100",
            "--latency-seconds",
            "0.3",
            "--fanout",
            "3,5",
            "--fanout-reps",
            "1",
            "--backlog",
            "40",
            "--outbox-rows",
            "2000",
            "--dispatchers",
            "4",
        ])
        .output()
        .expect("run hookd bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hookd bench failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the output is not JSON ({e}):\n{stdout}"));
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["bad_signatures"], 0, "{report:#}");
    for name in SCENARIOS {
        let cases = report["scenarios"][name]["cases"]
            .as_array()
            .unwrap_or_else(|| panic!("no `{name}` in the report:\n{report:#}"));
        assert!(!cases.is_empty(), "`{name}` has no cases");
        for case in cases {
            assert!(
                !case["figures"].as_array().is_none_or(Vec::is_empty),
                "`{name}` reports no figures: {case:#}"
            );
            assert_eq!(case["check"]["lost"], 0, "{case:#}");
            assert_eq!(
                case["check"]["arrived"], case["check"]["expected"],
                "every expected delivery arrives exactly once: {case:#}"
            );
            assert!(
                case["hookd"]["peak_rss_mb"].as_f64().unwrap_or(0.0) > 0.0,
                "hookd's peak RSS is reported: {case:#}"
            );
        }
    }
    // The bounds the two ratio targets are judged against are measured and reported.
    let ceilings = &report["ceilings"];
    for (what, value) in [
        (
            "the HTTP server doing no work",
            &ceilings["http_stack_events_per_s"],
        ),
        (
            "hookd's design doing none of its work",
            &ceilings["bare_design_events_per_s"],
        ),
        (
            "durable commits of 2 rows",
            &ceilings["durable_commits_per_s"]["2"],
        ),
        ("the bare outcome record", &ceilings["outcome_cpu_us"]),
        (
            "the delivery client's CPU",
            &ceilings["client_cpu_us_per_delivery"]["1"],
        ),
    ] {
        assert!(
            value.as_f64().is_some_and(|v| v > 0.0),
            "{what} is measured: {ceilings:#}"
        );
    }
    let ingest = &report["scenarios"]["ingest"]["cases"][0];
    for bound in [
        "any server on one SQLite file, at most",
        "hookd's design doing none of its work",
    ] {
        assert!(
            ingest["figures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["name"] == bound)),
            "ingest reports `{bound}`: {ingest:#}"
        );
    }
    // The sizes asked for are the sizes run: the backlog is not silently cut.
    let backlog = &report["scenarios"]["backlog"]["cases"][0];
    assert_eq!(
        backlog["check"]["published"], 43,
        "40 queued + 3 that disabled the hooks: {backlog:#}"
    );
    assert_eq!(
        report["scenarios"]["deliver"]["cases"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        report["scenarios"]["fanout"]["cases"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // The outbox: both phases on the empty database, the fill, both phases again; the
    // grown database's sequences go on from the filled rows without a gap.
    let outbox = report["scenarios"]["outbox"]["cases"]
        .as_array()
        .expect("outbox cases");
    let names: Vec<&str> = outbox.iter().filter_map(|c| c["case"].as_str()).collect();
    assert_eq!(
        names,
        [
            "ingest, empty database",
            "deliver, empty database",
            "fill, 2,000 delivered rows",
            "ingest, 2,000 delivered rows",
            "deliver, 2,000 delivered rows",
        ],
        "{report:#}"
    );
    for case in outbox {
        assert_eq!(case["check"]["sequence_gaps"], 0, "{case:#}");
        assert_eq!(case["check"]["out_of_order"], 0, "{case:#}");
    }
    let ratios = outbox
        .iter()
        .flat_map(|c| c["figures"].as_array().into_iter().flatten())
        .filter(|f| f["name"] == "grown / empty")
        .count();
    assert_eq!(
        ratios, 2,
        "ingest and deliver compared with the empty database"
    );
}
