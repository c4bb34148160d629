//! The writer's answer to one request: a one-shot slot that the waiting thread sleeps
//! on. A crossbeam channel spins and calls `sched_yield` before it sleeps; with 32
//! handler threads waiting for commits on 2 cores, that yielding was a tenth of the
//! CPU of single-event publishing as profiled. A mutex and a condition variable sleep
//! at once.
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
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The writer's end.
pub struct ReplySender<T>(Arc<Slot<T>>);

/// The caller's end.
pub struct ReplyReceiver<T>(Arc<Slot<T>>);

pub fn oneshot<T>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        ready: Condvar::new(),
    });
    (ReplySender(slot.clone()), ReplyReceiver(slot))
}

impl<T> ReplySender<T> {
    pub fn send(self, value: T) {
        self.set(State::Sent(value));
    }

    fn set(&self, value: State<T>) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, State::Taken) {
            State::Waiting => {
                *state = value;
                self.0.ready.notify_one();
            }
            State::Forward(forward) => {
                drop(state);
                forward(value.answer());
            }
            // Answered already (a drop after `send`): keep that answer.
            answered => *state = answered,
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
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        while matches!(*state, State::Waiting) {
            state = self.0.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        std::mem::replace(&mut *state, State::Taken).answer()
    }

    /// Does not wait: `forward` gets the answer (`None` if the sender went away without
    /// one), on the sender's thread when it comes, or on this one if it already came.
    pub fn then(self, forward: impl FnOnce(Option<T>) + Send + 'static) {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, State::Taken) {
            State::Waiting => *state = State::Forward(Box::new(forward)),
            answered => {
                drop(state);
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
