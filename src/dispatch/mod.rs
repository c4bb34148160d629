//! Delivery: the scheduler decides which hook sends next; dispatcher threads send.
//!
//! The scheduler keeps, per hook with work, one of two states: waiting until a time, or
//! in flight. A hook in flight is never handed out again, which is what makes delivery
//! per hook strictly ordered with at most one request outstanding. It learns of work
//! from the writer ([`Wakeup`]) and from dispatchers finishing ([`Done`]); at start it
//! asks the database which hooks have undelivered rows, so work claimed but unfinished
//! by a crashed process is simply due again (at least once, never zero times).
//!
//! Jobs go out in two lanes. A hook whose last attempt failed is *suspect* and goes to
//! the slow lane, which only a quarter of the dispatchers serve; the others serve the
//! fast lane only. So receivers that hang or fail can hold at most the slow lane's
//! dispatchers (each for at most one timeout per attempt), and healthy hooks keep
//! their latency. Slow-lane dispatchers help the fast lane when they have nothing else.

pub mod client;
mod cork;
pub mod handshake;
pub mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::clock::{now_ms, Millis};
use crate::store::recent::RecentEvents;
use crate::store::writer::Wakeup;
use crate::store::Reader;

/// A hook whose head delivery is due: a dispatcher should try it.
#[derive(Debug)]
pub struct Job {
    pub hook_id: String,
}

/// A dispatcher finished with a hook. `next`: when its next delivery is due, if any.
#[derive(Debug)]
pub struct Done {
    pub hook_id: String,
    pub next: Option<Millis>,
    /// `false` when the attempt failed: the hook goes to the slow lane.
    pub healthy: bool,
}

/// Which dispatchers a job may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Fast,
    Slow,
}

/// How many of `dispatchers` serve the slow lane.
pub fn slow_lane_size(dispatchers: usize) -> usize {
    (dispatchers / 4)
        .max(1)
        .min(dispatchers.saturating_sub(1).max(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookState {
    Waiting(Millis),
    /// `recheck`: something changed while it was out; look again as soon as it is back.
    InFlight {
        recheck: bool,
    },
}

/// The scheduler's state machine, separate from its channels so it is easy to test.
#[derive(Default)]
pub struct Schedule {
    hooks: HashMap<String, HookState>,
    /// Due times; stale entries (the hook moved on) are skipped when popped.
    due: BinaryHeap<Reverse<(Millis, String)>>,
    /// Hooks whose last attempt failed.
    suspect: HashSet<String>,
}

impl Schedule {
    fn wait(&mut self, hook: String, at: Millis) {
        self.due.push(Reverse((at, hook.clone())));
        self.hooks.insert(hook, HookState::Waiting(at));
    }

    /// New rows were queued (`reset` false) or the queue changed (`reset` true).
    pub fn wake(&mut self, hook: String, reset: bool, now: Millis) {
        match self.hooks.get_mut(&hook) {
            None => self.wait(hook, now),
            Some(HookState::InFlight { recheck }) => *recheck = true,
            // New rows queue behind the head, which is still backing off; but a reset
            // (activate, retry, replay) may have put an earlier row at the head.
            Some(HookState::Waiting(at)) => {
                if reset && *at > now {
                    self.wait(hook, now)
                }
            }
        }
    }

    /// Marks a hook suspect (or not) before it is first scheduled, e.g. at start.
    pub fn set_suspect(&mut self, hook: &str, suspect: bool) {
        if suspect {
            self.suspect.insert(hook.to_string());
        } else {
            self.suspect.remove(hook);
        }
    }

    pub fn done(&mut self, done: Done, now: Millis) {
        self.set_suspect(&done.hook_id, !done.healthy);
        let recheck = matches!(
            self.hooks.get(&done.hook_id),
            Some(HookState::InFlight { recheck: true })
        );
        match (recheck, done.next) {
            (true, _) => self.wait(done.hook_id, now),
            (false, Some(at)) => self.wait(done.hook_id, at),
            (false, None) => {
                self.hooks.remove(&done.hook_id);
                self.suspect.remove(&done.hook_id);
            }
        }
    }

    /// Hooks due at `now`, now marked in flight, with their lane.
    pub fn take_due(&mut self, now: Millis) -> Vec<(String, Lane)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, hook))) = self.due.pop() else {
                break;
            };
            if self.hooks.get(&hook) == Some(&HookState::Waiting(at)) {
                self.hooks
                    .insert(hook.clone(), HookState::InFlight { recheck: false });
                let lane = if self.suspect.contains(&hook) {
                    Lane::Slow
                } else {
                    Lane::Fast
                };
                out.push((hook, lane));
            }
        }
        out
    }

    /// Time until the next due hook, capped so the loop sees a stop in time.
    fn sleep_for(&self, now: Millis) -> Duration {
        let cap = 250;
        let ms = self
            .due
            .peek()
            .map(|Reverse((at, _))| (*at - now).clamp(0, cap))
            .unwrap_or(cap);
        Duration::from_millis(ms as u64)
    }
}

/// The job channels of the two lanes.
pub struct LaneSenders {
    pub fast: Sender<Job>,
    pub slow: Sender<Job>,
}

/// The scheduler thread's loop. Reads which hooks have undelivered rows at start and
/// every `resync_every` (`--resync-interval`): wake-ups from the writer cover
/// everything this process does; the re-read covers changes made by another process
/// (the `hookd` CLI working on the same file). Ends when `stop` receives (or is
/// closed).
pub fn run_scheduler(
    reader: Reader,
    wakeups: Receiver<Wakeup>,
    done: Receiver<Done>,
    jobs: LaneSenders,
    stop: Receiver<()>,
    resync_every: Duration,
    recent: Arc<RecentEvents>,
) {
    let mut schedule = Schedule::default();
    let mut last_sync: Option<std::time::Instant> = None;
    loop {
        if last_sync.is_none_or(|t| t.elapsed() >= resync_every) {
            last_sync = Some(std::time::Instant::now());
            match reader.hooks_with_open_work() {
                Ok(hooks) => {
                    let now = now_ms();
                    for (hook, failing) in hooks {
                        if !schedule.hooks.contains_key(&hook) {
                            schedule.set_suspect(&hook, failing);
                            schedule.wake(hook, false, now);
                        }
                    }
                }
                Err(e) => log::warn!("scheduler: cannot read queued work: {e}"),
            }
        }
        for (hook_id, lane) in schedule.take_due(now_ms()) {
            let lane = match lane {
                Lane::Fast => &jobs.fast,
                Lane::Slow => &jobs.slow,
            };
            if lane.send(Job { hook_id }).is_err() {
                return;
            }
        }
        let timeout = schedule.sleep_for(now_ms());
        select! {
            recv(wakeups) -> msg => match msg {
                Ok(Wakeup::Published(events)) => recent.add(events),
                Ok(Wakeup::NewWork(hooks)) => hooks.into_iter().for_each(|h| schedule.wake(h, false, now_ms())),
                Ok(Wakeup::Reset(hooks)) => hooks.into_iter().for_each(|h| schedule.wake(h, true, now_ms())),
                Err(_) => return,
            },
            recv(done) -> msg => match msg {
                Ok(d) => schedule.done(d, now_ms()),
                Err(_) => return,
            },
            recv(stop) -> _ => return,
            default(timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_lane_is_a_quarter_and_never_everything() {
        assert_eq!(slow_lane_size(32), 8);
        assert_eq!(slow_lane_size(4), 1);
        assert_eq!(slow_lane_size(2), 1);
        assert_eq!(slow_lane_size(1), 1);
    }

    #[test]
    fn a_hook_is_never_handed_out_twice_at_once() {
        let mut s = Schedule::default();
        s.wake("h".into(), false, 0);
        s.wake("h".into(), false, 0);
        assert_eq!(s.take_due(0), vec![("h".to_string(), Lane::Fast)]);
        s.wake("h".into(), false, 1);
        assert!(s.take_due(10).is_empty(), "in flight: not handed out again");
        // Work arrived while in flight: look again at once even if the dispatcher saw none.
        s.done(
            Done {
                hook_id: "h".into(),
                next: None,
                healthy: true,
            },
            10,
        );
        assert_eq!(s.take_due(10), vec![("h".to_string(), Lane::Fast)]);
    }

    #[test]
    fn backoff_holds_new_work_but_a_reset_cuts_it_short() {
        let mut s = Schedule::default();
        s.wake("h".into(), false, 0);
        s.take_due(0);
        s.done(
            Done {
                hook_id: "h".into(),
                next: Some(1000),
                healthy: false,
            },
            5,
        );
        s.wake("h".into(), false, 6);
        assert!(s.take_due(500).is_empty());
        s.wake("h".into(), true, 600);
        assert_eq!(
            s.take_due(600),
            vec![("h".to_string(), Lane::Slow)],
            "a failing hook goes to the slow lane"
        );
        assert!(
            s.take_due(2000).is_empty(),
            "the stale 1000 entry is skipped"
        );
    }

    #[test]
    fn idle_hooks_are_forgotten() {
        let mut s = Schedule::default();
        s.wake("h".into(), false, 0);
        s.take_due(0);
        s.done(
            Done {
                hook_id: "h".into(),
                next: None,
                healthy: false,
            },
            1,
        );
        assert!(s.hooks.is_empty() && s.suspect.is_empty());
    }
}
