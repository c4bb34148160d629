//! Delivery: the scheduler decides which hook sends next; dispatcher threads send.
//!
//! The scheduler keeps, per hook with work, one of two states: waiting until a time, or
//! in flight. A hook in flight is never handed out again, which is what makes delivery
//! per hook strictly ordered with at most one request outstanding. It learns of work
//! from the writer ([`Wakeup`]) and from dispatchers finishing ([`Done`]); at start it
//! asks the database which hooks have undelivered rows, so work claimed but unfinished
//! by a crashed process is simply due again (at least once, never zero times).

pub mod client;
pub mod handshake;
pub mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::clock::{now_ms, Millis};
use crate::store::writer::Wakeup;

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

    pub fn done(&mut self, done: Done, now: Millis) {
        let recheck = matches!(
            self.hooks.get(&done.hook_id),
            Some(HookState::InFlight { recheck: true })
        );
        match (recheck, done.next) {
            (true, _) => self.wait(done.hook_id, now),
            (false, Some(at)) => self.wait(done.hook_id, at),
            (false, None) => {
                self.hooks.remove(&done.hook_id);
            }
        }
    }

    /// Hooks due at `now`, now marked in flight.
    pub fn take_due(&mut self, now: Millis) -> Vec<String> {
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
                out.push(hook);
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

/// The scheduler thread's loop. Ends when `stop` receives (or is closed).
pub fn run_scheduler(
    initial: Vec<String>,
    wakeups: Receiver<Wakeup>,
    done: Receiver<Done>,
    jobs: Sender<Job>,
    stop: Receiver<()>,
) {
    let mut schedule = Schedule::default();
    let now = now_ms();
    for hook in initial {
        schedule.wake(hook, false, now);
    }
    loop {
        for hook_id in schedule.take_due(now_ms()) {
            if jobs.send(Job { hook_id }).is_err() {
                return;
            }
        }
        let timeout = schedule.sleep_for(now_ms());
        select! {
            recv(wakeups) -> msg => match msg {
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
    fn a_hook_is_never_handed_out_twice_at_once() {
        let mut s = Schedule::default();
        s.wake("h".into(), false, 0);
        s.wake("h".into(), false, 0);
        assert_eq!(s.take_due(0), vec!["h".to_string()]);
        s.wake("h".into(), false, 1);
        assert!(s.take_due(10).is_empty(), "in flight: not handed out again");
        // Work arrived while in flight: look again at once even if the dispatcher saw none.
        s.done(
            Done {
                hook_id: "h".into(),
                next: None,
            },
            10,
        );
        assert_eq!(s.take_due(10), vec!["h".to_string()]);
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
            },
            5,
        );
        s.wake("h".into(), false, 6);
        assert!(s.take_due(500).is_empty());
        s.wake("h".into(), true, 600);
        assert_eq!(s.take_due(600), vec!["h".to_string()]);
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
            },
            1,
        );
        assert!(s.hooks.is_empty());
    }
}
