//! Recently published events, kept in memory for the dispatchers. A hook's queue read
//! (`Reader::queued`) takes each row's event from here when it can, instead of from the
//! events table: SQLite empties a reader's page cache whenever the file has changed, and
//! a hook's events lie among every other hook's, so each event of a batch cost a page
//! fetched again (BENCHMARKS.md, item 39).
//!
//! An event never changes once committed, so a copy here cannot be stale. Events come
//! only after their commit, and only those queued for at least one hook: the writer
//! hands them to the scheduler (`Wakeup::Published`), which adds them here before it
//! hands out the work they are part of. The oldest go first once [`RecentEvents`]'s
//! budget is spent. A miss is read from
//! SQLite as before: nothing depends on an event being here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::model::Event;

/// Bytes of events kept by default: a few seconds of heavy publishing, enough for
/// every hook's queue to be read from here while it keeps up.
pub const DEFAULT_BUDGET: usize = 8 * 1024 * 1024;

pub struct RecentEvents {
    budget: usize,
    inner: Mutex<Inner>,
}

/// The events in id order, which is the order they come in (ids rise in commit order:
/// src/ids.rs), so a lookup is a binary search and adding or dropping one touches an
/// end; no map to keep (a hash map's insert and remove per event, and a copy of each
/// id for its key, cost more than the reads it saved: BENCHMARKS.md, item 39).
#[derive(Default)]
struct Inner {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl RecentEvents {
    pub fn new(budget: usize) -> RecentEvents {
        RecentEvents {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Event>> {
        let inner = self.lock();
        let i = inner
            .events
            .binary_search_by(|e| e.id.as_str().cmp(id))
            .ok()?;
        Some(inner.events[i].clone())
    }

    /// Adds committed events, then drops the oldest while over budget. An event that
    /// does not sort after the newest one kept (never expected) is left out rather than
    /// break the order.
    pub fn add(&self, events_in: Vec<Event>) {
        if events_in.is_empty() {
            return;
        }
        let events = &events_in;
        // Copies, made on this thread, of events whose strings came from the connection
        // threads: those go back at once, as before there was a cache, instead of
        // seconds later. (Kept as they were, the connection threads' heaps grew and shrank
        // with the cache, and their publishes got ~8 % of a core dearer.)
        let events: Vec<Arc<Event>> = events.iter().map(|e| Arc::new(e.clone())).collect();
        drop(events_in);
        let mut dropped = Vec::new();
        {
            let mut inner = self.lock();
            for e in events {
                if inner.events.back().is_some_and(|last| last.id >= e.id) {
                    continue;
                }
                inner.bytes += cost(&e);
                inner.events.push_back(e);
            }
            while inner.bytes > self.budget {
                let Some(old) = inner.events.pop_front() else {
                    break;
                };
                inner.bytes -= cost(&old);
                dropped.push(old);
            }
        }
        // Freed outside the lock: the dispatchers' lookups need not wait for it.
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the deque whole (each step is).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an event holds in memory, roughly: its strings and the allocations' overhead.
fn cost(e: &Event) -> usize {
    e.id.len()
        + e.tenant.len()
        + e.event_type.len()
        + e.resource_id.as_ref().map_or(0, String::len)
        + e.data.len()
        + 128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize, data: &str) -> Event {
        Event {
            id: format!("evt_{n:026}"),
            tenant: "default".into(),
            event_type: "t".into(),
            resource_id: None,
            data: data.into(),
            created_at: n as i64,
        }
    }

    #[test]
    fn the_oldest_events_go_first_when_over_budget() {
        let one = cost(&event(0, "{}"));
        let recent = RecentEvents::new(3 * one);
        recent.add((0..2).map(|n| event(n, "{}")).collect());
        assert_eq!(recent.get(&event(0, "").id).unwrap().data, "{}");
        recent.add((2..5).map(|n| event(n, "{}")).collect());
        let kept: Vec<bool> = (0..5)
            .map(|n| recent.get(&event(n, "").id).is_some())
            .collect();
        assert_eq!(kept, [false, false, true, true, true]);
        // One larger than the whole budget pushes everything out, itself included.
        recent.add(vec![event(5, &"x".repeat(4 * one))]);
        assert!(recent.get(&event(5, "").id).is_none());
        assert_eq!(recent.lock().bytes, 0);
        assert!(recent.lock().events.is_empty());
        // Out of order (never expected): left out, the rest still found.
        recent.add(vec![event(8, "{}"), event(7, "{}"), event(9, "{}")]);
        let kept: Vec<bool> = (7..10)
            .map(|n| recent.get(&event(n, "").id).is_some())
            .collect();
        assert_eq!(kept, [false, true, true]);
    }
}
