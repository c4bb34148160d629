//! Spawns, names and joins every thread, and owns shutdown. The only module that starts
//! threads.
//!
//! ```text
//!  HTTP handlers ──WriteOp──▶ writer ──Wakeup──▶ scheduler ──Job (fast/slow)──▶ dispatchers
//!        ▲ reads                 │ commits  ▲           ▲                          │ HTTP (ureq)
//!        └────── SQLite (WAL) ◀──┘          │           └───────────Done───────────┘
//!                               janitor ────┘ (Prune, every so often)
//! ```

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{Builder, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver};

use crate::config::Config;
use crate::dispatch::{self, worker};
use crate::store::{self, Store, WriteOp, WriteOutput};

pub type Error = Box<dyn std::error::Error>;

fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> Result<JoinHandle<()>, Error> {
    Ok(Builder::new().name(name).spawn(f)?)
}

/// Binds the API socket. Read and write timeouts set on the listening socket are
/// inherited by accepted connections on Linux: a client that stops sending (half a
/// request, a trickled body) or stops reading is dropped instead of holding a thread.
pub fn bind(addr: std::net::SocketAddr, timeout: Duration) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let socket = socket2::SockRef::from(&listener);
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    // Inherited too: responses go out at once. tiny_http writes through a 1 KiB buffer,
    // so a larger answer is two segments, and Nagle plus the client's delayed ACK held
    // the second one back 40 ms.
    socket.set_tcp_nodelay(true)?;
    Ok(listener)
}

/// Runs `hookd serve` until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), Error> {
    // Every client connection and every delivery connection is a descriptor: take all
    // the operating system allows, not the default soft limit (often 1024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => log::debug!("file descriptor limit: {n}"),
        Err(e) => log::warn!("cannot raise the file descriptor limit: {e}"),
    }
    let mut opened = store::open(&config.db, &config.secrets_key_file)?;
    if let Some(token) =
        store::bootstrap_admin(&mut opened.writer_conn, config.admin_token.as_deref())?
    {
        eprintln!("hookd: created an admin key; its token is shown only this once:\n{token}");
    }
    let secrets = opened.secrets.clone();
    let reader = || store::open_reader(&opened.path, secrets.clone());
    let scheduler_reader = reader()?;

    let (write_tx, write_rx) = bounded(config.writer_queue);
    let (wake_tx, wake_rx) = unbounded();
    let (fast_tx, fast_rx) = unbounded();
    let (slow_tx, slow_rx) = unbounded();
    let (done_tx, done_rx) = unbounded();
    // Never sent on: dropping the sender is the stop signal for every receiver.
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let stop_janitor_rx = stop_rx.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let store = Store::new(write_tx, config.enqueue_timeout);

    // Events the writer committed, kept for the dispatchers' queue reads (store/recent.rs).
    let recent = Arc::new(store::recent::RecentEvents::new(
        store::recent::DEFAULT_BUDGET,
    ));
    let writer_conn = opened.writer_conn;
    let writer_secrets = secrets.clone();
    let outcomes_coming = store.outcome_count();
    let writer = spawn("writer".into(), move || {
        store::writer::run(
            writer_conn,
            writer_secrets,
            write_rx,
            wake_tx,
            outcomes_coming,
        )
    })?;

    let client = dispatch::client::Client {
        timeout: config.delivery_timeout,
        policy: config.target_policy.clone(),
    };
    // Handshakes share one client, used by the API handlers (so one idle connection
    // per handler is the most it can reuse); each dispatcher builds its own.
    let agent = client.shared(config.handlers);
    let listener = bind(config.listen, config.read_timeout)?;
    let addr = listener.local_addr()?;
    // A body gets three read timeouts in all: slow links pass, trickling clients do not.
    let body_deadline = config.read_timeout * 3;
    let limits = Arc::new(crate::api::Limits {
        max_body: config.max_body,
        body_deadline,
        max_hooks_per_tenant: config.max_hooks_per_tenant,
        policy: config.target_policy.clone(),
        trusted_hosts: config.trust_target_hosts.clone(),
    });
    let rate_limiter = Arc::new(crate::api::RateLimiter::new(config.rate_limit));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let mut ctxs = Vec::new();
    for _ in 0..config.handlers {
        ctxs.push(crate::api::Ctx {
            store: store.clone(),
            reader: reader()?,
            limits: limits.clone(),
            verifier: dispatch::handshake::Verifier::new(agent.clone()),
            rate_limiter: rate_limiter.clone(),
            metrics: metrics.clone(),
            keys: crate::api::KeyCache::default(),
        });
    }
    // Requests are served on tiny_http's connection threads, at most `handlers` at a
    // time (api/pool.rs). One that finds them all busy waits until a body still
    // arriving on one of them has had its deadline, plus as long as a write may wait
    // for room in the writer's queue: slow clients hold a handler only so long.
    let handlers = Arc::new(crate::api::Handlers::new(
        ctxs,
        body_deadline + config.enqueue_timeout,
        metrics.clone(),
    ));
    // Serves until the end of this function (dropping it closes the listener).
    let _http = crate::api::Http::new(listener, body_deadline, handlers.clone())
        .map_err(|e| format!("cannot serve on {addr}: {e}"))?;

    let lanes = dispatch::LaneSenders {
        fast: fast_tx,
        slow: slow_tx,
    };
    let resync_every = config.resync_interval;
    let scheduler_recent = recent.clone();
    let scheduler = spawn("scheduler".into(), move || {
        dispatch::run_scheduler(
            scheduler_reader,
            wake_rx,
            done_rx,
            lanes,
            stop_rx,
            resync_every,
            scheduler_recent,
        )
    })?;
    let shared = worker::Shared {
        store: store.clone(),
        client,
        schedule: Arc::new(config.retry_schedule.clone()),
        disable_after: config.disable_after,
        stopping: stopping.clone(),
        metrics: metrics.clone(),
    };
    let (finished_tx, finished_rx) = unbounded::<()>();
    let slow_lane = dispatch::slow_lane_size(config.dispatchers);
    let mut dispatchers = Vec::new();
    for i in 0..config.dispatchers {
        let lanes = if i < slow_lane {
            worker::Lanes::Slow {
                slow: slow_rx.clone(),
                fast: fast_rx.clone(),
            }
        } else {
            worker::Lanes::Fast(fast_rx.clone())
        };
        let (shared, done) = (shared.clone(), done_tx.clone());
        let reader = reader()?.with_recent(recent.clone());
        let finished = finished_tx.clone();
        dispatchers.push(spawn(format!("dispatch-{i}"), move || {
            worker::run(shared, reader, lanes, done);
            drop(finished);
        })?);
    }
    drop((shared, fast_rx, slow_rx, done_tx, finished_tx));

    let janitor_store = store.clone();
    let janitor_stop = stop_janitor_rx;
    let retention = config.retention;
    let janitor = spawn("janitor".into(), move || {
        janitor(janitor_store, retention, janitor_stop)
    })?;

    // A first SIGINT/SIGTERM starts a clean stop; a second one while stopping exits at
    // once (signal-hook's documented double-signal pattern).
    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, term.clone())?;
        signal_hook::flag::register(signal, term.clone())?;
    }

    println!("listening on http://{addr}");
    log::info!(
        "hookd {} serving {} on http://{addr}: {} handlers, {} dispatchers ({} in the slow lane), \
         retry schedule of {} steps, delivery timeout {:?}, retention {:?}{}",
        env!("CARGO_PKG_VERSION"),
        opened.path.display(),
        config.handlers,
        config.dispatchers,
        slow_lane,
        config.retry_schedule.len(),
        config.delivery_timeout,
        config.retention,
        if config.target_policy.allow_private {
            ", private targets ALLOWED"
        } else {
            ""
        }
    );

    while !term.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!(
        "stopping: no new requests; in-flight deliveries get {:?}",
        config.shutdown_timeout
    );

    // Stop taking requests, then stop handing out deliveries; attempts in flight may
    // finish (bounded); then the WAL is checkpointed into the database file.
    stopping.store(true, Ordering::SeqCst);
    let busy = handlers.close(config.shutdown_timeout);
    if busy > 0 {
        log::warn!("{busy} requests were still being served at shutdown");
    }
    drop(stop_tx);
    let _ = scheduler.join();
    let _ = janitor.join();
    let deadline = Instant::now() + config.shutdown_timeout;
    // Each dispatcher drops its `finished` sender as the last thing it does, so a
    // disconnected channel means every one is done. Only at the deadline are the threads
    // themselves asked: one that has just dropped its sender may not yet count as
    // finished (that race once reported a finished delivery as abandoned).
    let all_done = loop {
        match finished_rx.recv_deadline(deadline) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break true,
            _ if Instant::now() >= deadline => break false,
            _ => {}
        }
    };
    let in_flight = if all_done {
        0
    } else {
        dispatchers.iter().filter(|d| !d.is_finished()).count()
    };
    if in_flight > 0 {
        log::warn!(
            "{in_flight} deliveries were still in flight at shutdown; they will be sent again on restart"
        );
    }
    if let Err(e) = store.internal(WriteOp::Checkpoint) {
        log::warn!("final checkpoint: {e}");
    }
    if in_flight == 0 {
        for d in dispatchers {
            let _ = d.join();
        }
        drop(store);
        let _ = writer.join();
    }
    drop(opened.lock);
    log::info!("stopped");
    Ok(())
}

/// Retention: every so often, prunes finished deliveries and unneeded events older than
/// `retention`, in small batches so publishes never wait long behind it.
fn janitor(store: Store, retention: Duration, stop: Receiver<()>) {
    let interval = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    const BATCH: u32 = 2000;
    loop {
        match stop.recv_timeout(interval) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let cutoff = crate::clock::now_ms() - retention.as_millis() as i64;
        let mut pruned = 0;
        loop {
            match store.internal(WriteOp::Prune {
                cutoff,
                limit: BATCH,
            }) {
                Ok(WriteOutput::Count(n)) => {
                    pruned += n;
                    if n < u64::from(BATCH) {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    log::warn!("retention: {e}");
                    break;
                }
            }
        }
        if pruned > 0 {
            log::info!("retention: pruned {pruned} rows");
        }
    }
}
