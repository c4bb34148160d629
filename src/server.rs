//! Spawns, names and joins every thread, and owns shutdown. The only module that starts
//! threads.
//!
//! ```text
//!  HTTP handlers ──WriteOp──▶ writer ──Wakeup──▶ scheduler ──Job──▶ dispatchers
//!        ▲ reads                 │ commits            ▲                 │ HTTP (ureq)
//!        └────── SQLite (WAL) ◀──┘                    └──────Done───────┘
//! ```

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};

use crate::config::Config;
use crate::dispatch::{self, worker};
use crate::store::{self, Store};

/// Room in the writer's queue; when it is full, publishes wait briefly and then get 503.
const WRITER_QUEUE: usize = 8192;
/// How long in-flight deliveries may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub type Error = Box<dyn std::error::Error>;

fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> Result<JoinHandle<()>, Error> {
    Ok(Builder::new().name(name).spawn(f)?)
}

/// Runs `hookd serve` until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), Error> {
    let mut opened = store::open(&config.db)?;
    if let Some(token) = store::bootstrap_admin(&mut opened.writer_conn, config.admin_token.as_deref())? {
        eprintln!("hookd: created an admin key; its token is shown only this once:\n{token}");
    }
    let initial = store::open_reader(&opened.path)?.hooks_with_open_work()?;

    let (write_tx, write_rx) = bounded(WRITER_QUEUE);
    let (wake_tx, wake_rx) = unbounded();
    let (job_tx, job_rx) = unbounded();
    let (done_tx, done_rx) = unbounded();
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let stopping = Arc::new(AtomicBool::new(false));
    let store = Store::new(write_tx);

    let writer_conn = opened.writer_conn;
    let writer = spawn("writer".into(), move || {
        store::writer::run(writer_conn, write_rx, wake_tx)
    })?;

    let listener = TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("cannot serve on {addr}: {e}"))?,
    );
    let mut handlers = Vec::new();
    for i in 0..config.handlers {
        let ctx = crate::api::Ctx {
            store: store.clone(),
            reader: store::open_reader(&opened.path)?,
            max_body: config.max_body,
        };
        let (server, stopping) = (server.clone(), stopping.clone());
        handlers.push(spawn(format!("http-{i}"), move || {
            crate::api::run_handler(server, ctx, stopping)
        })?);
    }

    let scheduler = spawn("scheduler".into(), move || {
        dispatch::run_scheduler(initial, wake_rx, done_rx, job_tx, stop_rx)
    })?;
    let shared = worker::Shared {
        store: store.clone(),
        agent: dispatch::client::agent(config.delivery_timeout, config.dispatchers),
        schedule: Arc::new(config.retry_schedule.clone()),
        disable_after: config.disable_after,
        stopping: stopping.clone(),
    };
    let (finished_tx, finished_rx) = unbounded::<()>();
    let mut dispatchers = Vec::new();
    for i in 0..config.dispatchers {
        let (shared, jobs, done) = (shared.clone(), job_rx.clone(), done_tx.clone());
        let reader = store::open_reader(&opened.path)?;
        let finished = finished_tx.clone();
        dispatchers.push(spawn(format!("dispatch-{i}"), move || {
            worker::run(shared, reader, jobs, done);
            drop(finished);
        })?);
    }
    drop((shared, job_rx, done_tx, finished_tx));

    println!("listening on http://{addr}");
    log::info!(
        "hookd {} serving {} on http://{addr} ({} handlers, {} dispatchers, retry schedule of {} steps)",
        env!("CARGO_PKG_VERSION"),
        opened.path.display(),
        config.handlers,
        config.dispatchers,
        config.retry_schedule.len()
    );

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal = signals.forever().next();
    log::info!("signal {signal:?}: stopping");

    // Stop taking requests, then stop handing out deliveries; attempts in flight may
    // finish (bounded); finally the writer drains its queue and exits.
    stopping.store(true, Ordering::SeqCst);
    for _ in &handlers {
        server.unblock();
    }
    for h in handlers {
        let _ = h.join();
    }
    let _ = stop_tx.send(());
    let _ = scheduler.join();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while Instant::now() < deadline {
        match finished_rx.recv_deadline(deadline) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            _ => continue,
        }
    }
    if dispatchers.iter().all(JoinHandle::is_finished) {
        for d in dispatchers {
            let _ = d.join();
        }
        drop(store);
        let _ = writer.join();
    } else {
        log::warn!("some deliveries were still in flight at shutdown; they will be sent again on restart");
    }
    drop(opened.lock);
    log::info!("stopped");
    Ok(())
}
