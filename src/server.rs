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

/// Binds the API socket. Read and write timeouts set on the listening socket are
/// inherited by accepted connections on Linux: a client that stops sending (half a
/// request, a trickled body) or stops reading is dropped instead of holding a thread.
fn bind(addr: std::net::SocketAddr, timeout: Duration) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let socket = socket2::SockRef::from(&listener);
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    Ok(listener)
}

/// Runs `hookd serve` until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), Error> {
    let mut opened = store::open(&config.db, &config.secrets_key_file)?;
    if let Some(token) =
        store::bootstrap_admin(&mut opened.writer_conn, config.admin_token.as_deref())?
    {
        eprintln!("hookd: created an admin key; its token is shown only this once:\n{token}");
    }
    let secrets = opened.secrets.clone();
    let reader = || store::open_reader(&opened.path, secrets.clone());
    let initial = reader()?.hooks_with_open_work()?;

    let (write_tx, write_rx) = bounded(WRITER_QUEUE);
    let (wake_tx, wake_rx) = unbounded();
    let (job_tx, job_rx) = unbounded();
    let (done_tx, done_rx) = unbounded();
    let (stop_tx, stop_rx) = bounded::<()>(1);
    let stopping = Arc::new(AtomicBool::new(false));
    let store = Store::new(write_tx);

    let writer_conn = opened.writer_conn;
    let writer_secrets = secrets.clone();
    let writer = spawn("writer".into(), move || {
        store::writer::run(writer_conn, writer_secrets, write_rx, wake_tx)
    })?;

    let agent = dispatch::client::agent(
        config.delivery_timeout,
        config.dispatchers,
        config.target_policy.clone(),
    );
    let listener = bind(config.listen, config.read_timeout)?;
    let addr = listener.local_addr()?;
    let http =
        crate::api::Http::new(listener).map_err(|e| format!("cannot serve on {addr}: {e}"))?;
    let limits = Arc::new(crate::api::Limits {
        max_body: config.max_body,
        max_hooks_per_tenant: config.max_hooks_per_tenant,
        policy: config.target_policy.clone(),
        trusted_hosts: config.trust_target_hosts.clone(),
    });
    let rate_limiter = Arc::new(crate::api::RateLimiter::new(config.rate_limit));
    let mut handlers = Vec::new();
    for i in 0..config.handlers {
        let ctx = crate::api::Ctx {
            store: store.clone(),
            reader: reader()?,
            limits: limits.clone(),
            verifier: dispatch::handshake::Verifier::new(agent.clone()),
            rate_limiter: rate_limiter.clone(),
        };
        let (http, stopping) = (http.clone(), stopping.clone());
        handlers.push(spawn(format!("http-{i}"), move || {
            crate::api::run_handler(http, ctx, stopping)
        })?);
    }

    let scheduler = spawn("scheduler".into(), move || {
        dispatch::run_scheduler(initial, wake_rx, done_rx, job_tx, stop_rx)
    })?;
    let shared = worker::Shared {
        store: store.clone(),
        agent,
        schedule: Arc::new(config.retry_schedule.clone()),
        disable_after: config.disable_after,
        stopping: stopping.clone(),
    };
    let (finished_tx, finished_rx) = unbounded::<()>();
    let mut dispatchers = Vec::new();
    for i in 0..config.dispatchers {
        let (shared, jobs, done) = (shared.clone(), job_rx.clone(), done_tx.clone());
        let reader = reader()?;
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
    http.unblock(handlers.len());
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
        log::warn!(
            "some deliveries were still in flight at shutdown; they will be sent again on restart"
        );
    }
    drop(opened.lock);
    log::info!("stopped");
    Ok(())
}
