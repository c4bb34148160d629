//! Backpressure: when the database writer's queue is full, publish answers 503 with
//! Retry-After instead of buffering without limit; nothing acknowledged is lost and
//! publishing recovers by itself once the load drops.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn a_full_writer_queue_answers_503_and_recovers_without_losing_accepted_events() {
    // A one-slot queue and no waiting for room make "full" reachable on purpose.
    let hookd = Hookd::options()
        .arg("--writer-queue")
        .arg("1")
        .arg("--enqueue-timeout")
        .arg("0ms")
        .arg("--rate-limit")
        .arg("0")
        .start();
    let sink = Sink::start();
    let hook = hookd.create_hook(json!({
        "target_url": sink.url("/bp"), "event": "load.*", "batch_max": 100
    }));

    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<(Option<String>, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers: Vec<_> = (0..16)
        .map(|t| {
            let (hookd_url, admin) = (hookd.url("/v1/events"), hookd.admin.clone());
            let (accepted, refused, stop) = (accepted.clone(), refused.clone(), stop.clone());
            thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let batch: Vec<_> = (0..20)
                        .map(
                            |j| json!({"type": "load.tick", "resource_id": format!("{t}-{i}-{j}")}),
                        )
                        .collect();
                    i += 1;
                    let mut resp = agent
                        .post(&hookd_url)
                        .header("Authorization", &format!("Bearer {admin}"))
                        .header("Content-Type", "application/json")
                        .send(serde_json::to_vec(&batch).unwrap().as_slice())
                        .expect("the server answers every request");
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let text = resp.body_mut().read_to_string().unwrap();
                    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                    match status {
                        202 => accepted.lock().unwrap().extend(
                            body.as_array()
                                .unwrap()
                                .iter()
                                .map(|r| r["id"].as_str().unwrap().to_string()),
                        ),
                        503 => {
                            refused.lock().unwrap().push((
                                retry_after,
                                body["error"]["code"].as_str().unwrap_or("").to_string(),
                            ));
                            stop.store(true, Ordering::SeqCst);
                        }
                        other => panic!("unexpected status {other}: {body}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }

    let refused = refused.lock().unwrap().clone();
    assert!(
        !refused.is_empty(),
        "16 publishers against a one-slot writer queue never saw a 503"
    );
    for (retry_after, code) in &refused {
        assert_eq!(code, "unavailable");
        let secs: u64 = retry_after
            .as_deref()
            .expect("a 503 carries Retry-After")
            .parse()
            .expect("Retry-After is seconds");
        assert!(secs >= 1);
    }

    // Once the load is gone, publishing works again by itself.
    let later = wait_until("publish to recover", Duration::from_secs(10), || {
        let r = hookd.post(
            &hookd.admin,
            "/v1/events",
            &json!({"type": "load.after", "resource_id": "after"}),
        );
        (r.status == 202).then(|| r.body["id"].as_str().unwrap().to_string())
    });

    // Every acknowledged event arrives; none was lost to the refusals.
    let mut want: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
    want.insert(later);
    let arrived = sink.wait_until("every accepted event", |reqs| {
        let got: HashSet<String> = delivered_events(reqs)
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect();
        want.is_subset(&got)
    });
    let events = delivered_events(&arrived);
    let seqs = seqs(&events);
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted,
        (1..=sorted.len() as i64).collect::<Vec<_>>(),
        "no gaps"
    );
    assert!(!hook.id.is_empty());
    hookd.assert_healthy();
}

/// The writer thread runs at nice -10 when the process may lower a nice value (root,
/// CAP_SYS_NICE or RLIMIT_NICE); otherwise it says at start-up that it keeps the
/// default priority, and serves all the same.
#[test]
fn the_writer_runs_at_a_raised_priority_or_says_why_not() {
    let hookd = Hookd::options().env("RUST_LOG", "info").start();
    let tasks = format!("/proc/{}/task", hookd.pid());
    let writer = std::fs::read_dir(&tasks)
        .expect("hookd's threads")
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "writer")
        })
        .expect("a thread named writer");
    // The thread sets its own priority as its first act, which may come a moment after
    // the server says it is listening: poll until it has done one or the other.
    let nice_now = || -> i32 {
        let stat = std::fs::read_to_string(writer.path().join("stat")).unwrap();
        // Fields after the command name (which ends with the last ')'): state is field
        // 3, nice field 19.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        after_comm.split(' ').nth(16).unwrap().parse().unwrap()
    };
    let said = || {
        hookd
            .stderr()
            .contains("writer: keeps the default priority")
    };
    let settled = wait_until_or(WAIT, || (nice_now() == -10 || said()).then_some(()));
    let nice = nice_now();
    assert!(
        settled.is_some(),
        "the writer runs at nice {nice}, not -10, and did not say why:\n{}",
        hookd.stderr()
    );
    if nice != -10 {
        assert_eq!(
            nice, 0,
            "the writer's nice value is neither -10 nor the default"
        );
    }
    hookd.assert_healthy();
}
