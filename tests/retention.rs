//! Retention (issue 4, item 6): after `--retention`, delivered and dead deliveries, their
//! attempts, and events no delivery needs any more are pruned; undelivered ones stay;
//! and under steady load the database file stops growing.
//!
//! The janitor runs every max(1 s, retention / 10). Rows that must be gone are checked
//! through the API where it can show them (the delivery log, `GET /v1/events/{id}`) and
//! in the file where it cannot (attempts, row counts).

mod common;
mod faultkit;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{wait_until_or, Reply, Sink, TempDir, WAIT};
use faultkit::{db_bytes, db_count, Server};
use serde_json::{json, Value};

#[test]
fn finished_deliveries_and_their_events_are_pruned_after_retention_open_ones_stay() {
    let ok_sink = Sink::start();
    let dead_sink = Sink::start();
    dead_sink.set_default(500);
    // Asks for an hour's pause: its delivery stays open (failed, retried later).
    let held_sink = Sink::start();
    held_sink.set_default(Reply::status(503).header("Retry-After", "3600"));
    let dir = TempDir::new();
    let db = dir.path.join("hookd.db");
    let mut server = Server::on(&db)
        .set("--retention", "2s")
        .set("--retry-schedule", "100ms")
        .start();
    let (ok_hook, _) = server.hook(json!({"target_url": ok_sink.url("/ok"), "event": "r.ok"}));
    let (dead_hook, _) =
        server.hook(json!({"target_url": dead_sink.url("/dead"), "event": "r.dead"}));
    let (held_hook, _) =
        server.hook(json!({"target_url": held_sink.url("/held"), "event": "r.held"}));

    let published = Instant::now();
    let ok_event = server.publish("r.ok", "1");
    let dead_event = server.publish("r.dead", "2");
    let held_event = server.publish("r.held", "3");
    let finished = |hook: &str, status: &str| {
        wait_until_or(WAIT, || {
            let log = server.deliveries(hook, Some(status));
            (!log.is_empty() && !log[0]["attempts"].as_array().unwrap().is_empty())
                .then(|| log[0]["id"].as_str().unwrap().to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "hook {hook} has no {status} delivery: {:?}",
                server.deliveries(hook, None)
            )
        })
    };
    let ok_dlv = finished(&ok_hook, "delivered");
    let dead_dlv = finished(&dead_hook, "dead");
    let held_dlv = finished(&held_hook, "failed");
    assert!(
        published.elapsed() < Duration::from_millis(1500),
        "setting up took {:?}: too slow to see that nothing goes before the retention",
        published.elapsed()
    );
    // Not before the retention has passed.
    for id in [&ok_event, &dead_event] {
        assert_eq!(server.get(&format!("/v1/events/{id}")).status, 200);
    }

    let gone = |id: &str| server.get(&format!("/v1/events/{id}")).status == 404;
    let pruned = wait_until_or(Duration::from_secs(10), || {
        (gone(&ok_event)
            && gone(&dead_event)
            && server.deliveries(&ok_hook, None).is_empty()
            && server.deliveries(&dead_hook, None).is_empty())
        .then(|| published.elapsed())
    });
    let Some(after) = pruned else {
        panic!(
            "finished deliveries were not pruned within 10 s of a 2 s retention: ok log {:?}, \
             dead log {:?}",
            server.deliveries(&ok_hook, None),
            server.deliveries(&dead_hook, None)
        );
    };
    assert!(
        after >= Duration::from_secs(2),
        "pruned {after:?} after publishing, before the 2 s retention"
    );
    eprintln!("finished deliveries pruned {after:?} after publishing (retention 2 s)");

    // Their attempts went with them.
    for dlv in [&ok_dlv, &dead_dlv] {
        assert_eq!(
            db_count(
                &db,
                "SELECT count(*) FROM attempts WHERE delivery_id = ?1",
                &[dlv]
            ),
            0,
            "attempts of pruned delivery {dlv} remain"
        );
    }
    // The open delivery, its attempt and its event stay.
    let held = server.get(&format!("/v1/events/{held_event}"));
    assert_eq!(held.status, 200, "the undelivered event was pruned: {held}");
    let log = server.deliveries(&held_hook, None);
    assert_eq!(log.len(), 1, "the held hook's log: {log:?}");
    assert_eq!(log[0]["id"], held_dlv.as_str());
    assert_eq!(log[0]["status"], "failed");
    assert!(
        db_count(
            &db,
            "SELECT count(*) FROM attempts WHERE delivery_id = ?1",
            &[&held_dlv]
        ) >= 1,
        "the open delivery lost its attempts"
    );
    assert_eq!(db_count(&db, "SELECT count(*) FROM events", &[]), 1);
    assert_eq!(db_count(&db, "SELECT count(*) FROM deliveries", &[]), 1);

    // The pruned hook's numbering carries on, after a restart too: its next event is 2,
    // not 1 again (the server keeps sequence numbers in memory and recovers them at start).
    server.restart();
    server.publish("r.ok", "4");
    let got = ok_sink.wait_for(2);
    assert_eq!(
        got[1].json()["sequence"],
        2,
        "after pruning and a restart: {}",
        got[1].json()
    );
}

/// Steady publishing with a 1 s retention: the file (database + WAL) reaches a size
/// and stays there, because pruned pages are reused. Without pruning it grows with
/// every event; the check compares the growth in the second half with the data
/// published in it, and counts the stored events.
#[test]
fn the_database_file_stays_bounded_under_steady_load() {
    steady_load(1);
}

/// The same with deliveries of up to 100 events. The janitor deletes at most 500
/// events per pass and only repeats a pass while it removed 500 delivery *batches*;
/// with batches (or events no hook matched) it falls behind any load above 500
/// events per janitor period (1 s here; 60 s with the default 7 d retention) and the
/// events table grows without bound.
#[test]
fn the_database_file_stays_bounded_under_steady_load_with_batched_deliveries() {
    steady_load(100);
}

/// The load tests take turns: two at once on a small machine halve each one's rate and
/// blur the steady state they measure.
static LOAD: Mutex<()> = Mutex::new(());

fn steady_load(batch_max: u32) {
    const PHASE: Duration = Duration::from_secs(4);
    let _turn = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let sink = Sink::start();
    let dir = TempDir::new();
    let db = dir.path.join("hookd.db");
    let server = Server::on(&db).set("--retention", "1s").start();
    server.hook(json!({
        "target_url": sink.url("/load"), "event": "load.*", "batch_max": batch_max
    }));

    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicUsize::new(0));
    // Retention is what is measured, not throughput: the publisher stays at most a
    // few batches ahead of what has arrived, so finished rows (which alone may be
    // pruned) are most of what the file holds, whatever the machine's speed.
    let arrived = sink.delivered_counter();
    let publisher = {
        let (stop, events) = (stop.clone(), events.clone());
        let (port, admin) = (server.port, server.admin().to_string());
        thread::spawn(move || {
            let agent = faultkit::agent(WAIT);
            let filler = "x".repeat(1000);
            while !stop.load(Ordering::SeqCst) {
                if events.load(Ordering::SeqCst) > arrived() + 500 {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let batch: Vec<Value> = (0..50)
                    .map(|_| json!({"type": "load.e", "data": {"filler": filler}}))
                    .collect();
                let a = faultkit::publish_with(&agent, port, &admin, &Value::Array(batch))
                    .expect("publish");
                assert_eq!(a.status, 202, "publish under load: {a}");
                events.fetch_add(50, Ordering::SeqCst);
            }
        })
    };
    // The load runs for three fixed phases: a warm-up (the WAL reaches its
    // checkpoint size, the first rows pass the retention), then two measured ones.
    thread::sleep(PHASE);
    let size0 = db_bytes(&db);
    thread::sleep(PHASE);
    let (size1, events1) = (db_bytes(&db), events.load(Ordering::SeqCst));
    let main1 = db_main_bytes(&db);
    // The last phase is twice as long: the main file only moves at checkpoints, so
    // one that lands just inside it carries up to a WAL's worth of pages written
    // before it; over a longer phase that fixed amount is a smaller share of the data
    // (a 4 s phase once failed on CI at 2.89 MB of 8.15 MB published).
    thread::sleep(PHASE * 2);
    let (size2, events2) = (db_bytes(&db), events.load(Ordering::SeqCst));
    stop.store(true, Ordering::SeqCst);
    publisher.join().expect("publisher");
    let rows = db_count(&db, "SELECT count(*) FROM events", &[]) as usize;

    let last = events2 - events1;
    let last_data = last as u64 * 1000;
    let growth = size2.saturating_sub(size1);
    eprintln!(
        "batch_max {batch_max}: file {size0} bytes after the warm-up, {size1} after \
         {events1} events, {size2} after {events2} (+{growth} while {last_data} bytes of \
         events were published); {rows} events stored at the end"
    );
    assert!(
        last >= 500,
        "too little load to mean anything: {last} events in the last phase"
    );
    assert!(
        size2 <= size0 * 2,
        "the file grew from {size0} to {size2} bytes after the warm-up"
    );
    // Unpruned, every event adds more than its data to the file (the janitor falling
    // behind, about two thirds of it); pruned, freed pages are reused and the database
    // file stands nearly still. The WAL beside it only moves between checkpoints, and
    // hookd truncates it back to 64 MiB (journal_size_limit) after each: it is bounded
    // on its own rather than counted as growth.
    let main_growth = db_main_bytes(&db).saturating_sub(main1);
    assert!(
        std::fs::metadata(faultkit::wal_path(&db)).map_or(0, |m| m.len()) <= 72 << 20,
        "the WAL grew past its 64 MiB limit"
    );
    let growth = main_growth;
    assert!(
        growth < last_data / 4,
        "the file grew by {growth} bytes while {last_data} bytes of events were published: \
         pruned space is not reused"
    );
    // The rows themselves are bounded: about (retention + janitor period) of events,
    // here under 3 s worth of the last phase's rate.
    let per_second = last / PHASE.as_secs() as usize;
    assert!(
        rows < 3 * per_second,
        "{rows} events are still stored with a 1 s retention at {per_second} events/s"
    );
}

/// The size of the database file alone, without its WAL.
fn db_main_bytes(db: &std::path::Path) -> u64 {
    std::fs::metadata(db).map_or(0, |m| m.len())
}
