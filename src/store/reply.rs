//! The writer's answer to one request: a one-shot slot that the waiting thread sleeps
//! on. A crossbeam channel spins and calls `sched_yield` before it sleeps; with 32
//! handler threads waiting for commits on 2 cores, that yielding was a tenth of the
//! CPU of single-event publishing as profiled. A mutex and a condition variable sleep
//! at once.
//!
//! The writer answers a whole group at once ([`send_all`]): it fills every slot, but
//! wakes only the first waiting caller, which wakes the next as it starts, and so on.
//! A wake-up is a system call (a futex, and an interrupt to the other core) that cost
//! the writer a twelfth of its time in single-event publishing, one per publish; the
//! writer is the one thread every write waits for, so the wake-ups are better spent by
//! the callers, which are many.
//!
//! A caller that need not wait can instead leave a function in the slot
//! ([`ReplyReceiver::then`]): the writer runs it with the answer, right after the commit.
//! A dispatcher hands its hook back to the scheduler this way, so it can take the next
//! hook while the last outcome is still being written.

use std::sync::{Arc, Condvar, Mutex};

type Forward<T> = Box<dyn FnOnce(Option<T>) + Send>;

enum State<T> {
    Waiting,
    /// Nobody waits: the answer (`None` if there is none) goes to this function.
    Forward(Forward<T>),
    Sent(T),
    /// The sender was dropped without an answer (the writer stopped).
    Dropped,
    Taken,
}

struct Slot<T> {
    state: Mutex<Inner<T>>,
    ready: Condvar,
}

struct Inner<T> {
    state: State<T>,
    /// Callers answered in the same group and still asleep: whoever takes this slot's
    /// answer wakes the first of them and hands it the rest.
    next: Vec<Arc<Slot<T>>>,
    /// The caller sleeps in `recv`. Only such a caller needs a wake-up, and only such a
    /// caller is sure to pass a chain on soon: one that holds its receiver for later
    /// (a dispatcher's outcome) could hold up the callers after it.
    asleep: bool,
}

/// The writer's end.
pub struct ReplySender<T>(Arc<Slot<T>>);

/// The caller's end.
pub struct ReplyReceiver<T>(Arc<Slot<T>>);

pub fn oneshot<T>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(Inner {
            state: State::Waiting,
            next: Vec::new(),
            asleep: false,
        }),
        ready: Condvar::new(),
    });
    (ReplySender(slot.clone()), ReplyReceiver(slot))
}

impl<T> ReplySender<T> {
    pub fn send(self, value: T) {
        self.set(State::Sent(value));
    }

    fn set(&self, value: State<T>) {
        if self.fill(value) {
            self.0.ready.notify_one();
        }
    }

    /// Puts the answer in the slot (or runs the caller's function with it); true when the
    /// caller is asleep on the slot and must be woken.
    fn fill(&self, value: State<T>) -> bool {
        let mut inner = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut inner.state, State::Taken) {
            State::Waiting => {
                inner.state = value;
                inner.asleep
            }
            State::Forward(forward) => {
                drop(inner);
                forward(value.answer());
                false
            }
            // Answered already (a drop after `send`): keep that answer.
            answered => {
                inner.state = answered;
                false
            }
        }
    }
}

/// Answers every sender with its value, in order, and wakes their callers as a chain:
/// this thread wakes only the first (see the module's comment).
pub fn send_all<T>(answers: impl IntoIterator<Item = (ReplySender<T>, T)>) {
    let mut asleep = Vec::new();
    for (sender, value) in answers {
        if sender.fill(State::Sent(value)) {
            asleep.push(sender.0.clone());
        }
        // The sender's drop finds the slot answered and leaves it.
    }
    wake_chain(asleep);
}

/// Wakes the first of `slots` whose caller still sleeps, and leaves it the rest to wake
/// in its turn. A caller that woke by itself has taken its answer (or is about to,
/// under this lock) and is skipped: it would not pass the chain on. Only `recv` ever
/// sleeps, so only `recv` is handed a chain.
fn wake_chain<T>(slots: Vec<Arc<Slot<T>>>) {
    let mut slots = slots.into_iter();
    while let Some(slot) = slots.next() {
        let mut inner = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if inner.asleep {
            inner.next = slots.collect();
            drop(inner);
            slot.ready.notify_one();
            return;
        }
    }
}

impl<T> State<T> {
    /// What the caller gets: the value, or `None` when there was none.
    fn answer(self) -> Option<T> {
        match self {
            State::Sent(v) => Some(v),
            _ => None,
        }
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        self.set(State::Dropped);
    }
}

impl<T> std::fmt::Debug for ReplySender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplySender")
    }
}

impl<T> ReplyReceiver<T> {
    /// Waits for the answer; `None` if the sender went away without one.
    pub fn recv(self) -> Option<T> {
        let mut inner = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        while matches!(inner.state, State::Waiting) {
            inner.asleep = true;
            inner = self.0.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
            inner.asleep = false;
        }
        let answer = std::mem::replace(&mut inner.state, State::Taken).answer();
        let next = std::mem::take(&mut inner.next);
        drop(inner);
        wake_chain(next);
        answer
    }

    /// Does not wait: `forward` gets the answer (`None` if the sender went away without
    /// one), on the sender's thread when it comes, or on this one if it already came.
    pub fn then(self, forward: impl FnOnce(Option<T>) + Send + 'static) {
        let mut inner = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut inner.state, State::Taken) {
            State::Waiting => inner.state = State::Forward(Box::new(forward)),
            answered => {
                drop(inner);
                forward(answered.answer());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_arrives_across_threads_and_a_dropped_sender_is_seen() {
        let (tx, rx) = oneshot();
        let t = std::thread::spawn(move || tx.send(7));
        assert_eq!(rx.recv(), Some(7));
        t.join().unwrap();
        let (tx, rx) = oneshot::<u8>();
        let t = std::thread::spawn(move || drop(tx));
        assert_eq!(rx.recv(), None);
        t.join().unwrap();
    }

    /// Every caller of a group gets its answer, though the sender wakes only the first:
    /// callers asleep (or about to be), callers holding their receiver for later, and
    /// callers gone away in between.
    #[test]
    fn a_group_answered_at_once_wakes_every_caller_through_the_chain() {
        let (done_tx, done) = std::sync::mpsc::channel();
        for round in 0..50 {
            let mut senders = Vec::new();
            let mut late = Vec::new();
            let mut asleep = 0;
            for i in 0..8u32 {
                let (tx, rx) = oneshot();
                senders.push((tx, i));
                match i % 4 {
                    // Gone before the answer: the chain must skip it.
                    3 => drop(rx),
                    // Held, not read until the end.
                    2 => late.push((i, rx)),
                    _ => {
                        let done = done_tx.clone();
                        std::thread::spawn(move || done.send((i, rx.recv())).unwrap());
                        asleep += 1;
                    }
                }
            }
            // Let the waiting callers fall asleep (in some rounds only).
            if round % 2 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            send_all(senders);
            for _ in 0..asleep {
                // A broken chain leaves a caller asleep for good: fail instead of hanging.
                let (i, got) = done
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("a caller was never woken");
                assert_eq!(got, Some(i));
            }
            // Held receivers (a dispatcher's outcome) are read last: the callers asleep
            // must not have waited for them.
            for (i, rx) in late {
                assert_eq!(rx.recv(), Some(i));
            }
        }
    }

    #[test]
    fn a_forwarded_answer_reaches_the_function_whenever_it_comes() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        // The answer comes after the function was left.
        let (tx, rx) = oneshot();
        let s = seen_tx.clone();
        rx.then(move |v| s.send(v).unwrap());
        std::thread::spawn(move || tx.send(1)).join().unwrap();
        assert_eq!(seen.recv().unwrap(), Some(1));
        // The answer came first.
        let (tx, rx) = oneshot();
        tx.send(2);
        let s = seen_tx.clone();
        rx.then(move |v| s.send(v).unwrap());
        assert_eq!(seen.recv().unwrap(), Some(2));
        // No answer ever comes.
        let (tx, rx) = oneshot::<u8>();
        rx.then(move |v| seen_tx.send(v).unwrap());
        drop(tx);
        assert_eq!(seen.recv().unwrap(), None);
    }
}
