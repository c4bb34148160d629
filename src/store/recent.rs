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
//! budget is spent. A miss is read from SQLite as before: nothing depends on an event
//! being here.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use crate::ids;
use crate::model::Event;

/// Bytes of events kept by default: a few seconds of heavy publishing, enough for
/// every hook's queue to be read from here while it keeps up.
pub const DEFAULT_BUDGET: usize = 8 * 1024 * 1024;

pub struct RecentEvents {
    budget: usize,
    /// Read by every dispatcher at once; written by the scheduler alone.
    inner: RwLock<Inner>,
}

/// The events in id order, which is the order they come in (ids rise in commit order:
/// src/ids.rs), each under its id's 128-bit value: a lookup is a binary search over
/// integers, and adding or dropping an event touches an end. No map to keep (a hash
/// map's insert and removal per event, and a copy of each id for its key, cost more
/// than the reads they saved: BENCHMARKS.md, item 39).
#[derive(Default)]
struct Inner {
    keys: VecDeque<u128>,
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl RecentEvents {
    pub fn new(budget: usize) -> RecentEvents {
        RecentEvents {
            budget,
            inner: RwLock::new(Inner::default()),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Event>> {
        // Only event ids are kept, and among them an id's value is unique, so the
        // event's own id need not be read to confirm (that comparison, reaching two
        // allocations deep, was ~6 % of a dispatcher's samples).
        if !id.starts_with("evt_") {
            return None;
        }
        let key = ids::value_of(id)?;
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let i = inner.keys.binary_search(&key).ok()?;
        Some(inner.events[i].clone())
    }

    /// Adds committed events, then drops the oldest while over budget. An event that
    /// does not sort after the newest one kept (never expected) is left out rather than
    /// break the order.
    pub fn add(&self, events_in: Vec<Event>) {
        if events_in.is_empty() {
            return;
        }
        // Copies, made on this thread, of events whose strings came from the connection
        // threads: those go back at once, as before there was a cache, instead of
        // seconds later. (Kept as they were, the connection threads used 33–39 % of a
        // core against 28–31 % in batch_max 100, presumably their allocator giving memory
        // back and taking it again; with the copies, 28 %.)
        let events: Vec<(u128, Arc<Event>)> = events_in
            .iter()
            .filter_map(|e| Some((ids::value_of(&e.id)?, Arc::new(e.clone()))))
            .collect();
        drop(events_in);
        let mut dropped = Vec::new();
        {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            for (key, e) in events {
                if inner.keys.back().is_some_and(|last| *last >= key) {
                    continue;
                }
                inner.bytes += cost(&e);
                inner.keys.push_back(key);
                inner.events.push_back(e);
            }
            while inner.bytes > self.budget {
                let Some(old) = inner.events.pop_front() else {
                    break;
                };
                inner.keys.pop_front();
                inner.bytes -= cost(&old);
                dropped.push(old);
            }
        }
        // Freed outside the lock: the dispatchers' lookups need not wait for it.
        drop(dropped);
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
        // Another kind of id with the same characters is not an event's.
        assert!(recent.get(&format!("hook_{:026}", 3)).is_none());
        // One larger than the whole budget pushes everything out, itself included.
        recent.add(vec![event(5, &"x".repeat(4 * one))]);
        assert!(recent.get(&event(5, "").id).is_none());
        assert_eq!(recent.inner.read().unwrap().bytes, 0);
        assert!(recent.inner.read().unwrap().events.is_empty());
        // Out of order (never expected): left out, the rest still found.
        recent.add(vec![event(8, "{}"), event(7, "{}"), event(9, "{}")]);
        let kept: Vec<bool> = (7..10)
            .map(|n| recent.get(&event(n, "").id).is_some())
            .collect();
        assert_eq!(kept, [false, true, true]);
    }
}
