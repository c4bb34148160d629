//! Sends a request's head and a small body in one write.
//!
//! ureq writes the request head and then the body, each with its own call to the
//! transport, so every delivery went out as two TCP segments: two `send` calls here, and
//! a receiver that often wakes for the head alone and again for the body. This layer,
//! chained on top of ureq's own connectors (TCP, or TLS over it), holds a small output
//! back and sends it in front of the next one, or before the transport waits for an
//! answer, whichever comes first. It changes nothing in what is sent, only how it is cut.

use std::fmt;

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use ureq::Error;

/// Outputs up to this size are held back for the next one; a request head is far smaller.
const HOLD_MAX: usize = 8 * 1024;

/// The connector: wraps whatever transport the connectors before it made.
#[derive(Debug, Default)]
pub struct Corking;

impl Connector<Box<dyn Transport>> for Corking {
    type Out = Corked<Box<dyn Transport>>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Self::Out>, Error> {
        Ok(chained.map(|inner| Corked {
            inner,
            held: Vec::new(),
        }))
    }
}

/// A transport whose small outputs wait for the next output or the next read.
pub struct Corked<T> {
    inner: T,
    /// Output already handed to us and not yet sent.
    held: Vec<u8>,
}

impl<T> fmt::Debug for Corked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Corked")
            .field("held", &self.held.len())
            .finish()
    }
}

impl<T: Transport> Corked<T> {
    /// Sends what is held, alone.
    fn flush(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        if self.held.is_empty() {
            return Ok(());
        }
        let n = self.held.len();
        // It came from this buffer, so it fits.
        self.inner.buffers().output()[..n].copy_from_slice(&self.held);
        self.held.clear();
        self.inner.transmit_output(n, timeout)
    }
}

impl<T: Transport> Transport for Corked<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        if self.held.is_empty() {
            if amount > 0 && amount <= HOLD_MAX {
                let output = self.inner.buffers().output();
                self.held.extend_from_slice(&output[..amount]);
                return Ok(());
            }
            return self.inner.transmit_output(amount, timeout);
        }
        let held = self.held.len();
        let output = self.inner.buffers().output();
        if held + amount <= output.len() {
            // The held bytes go in front of this output, in one write.
            output.copy_within(..amount, held);
            output[..held].copy_from_slice(&self.held);
            self.held.clear();
            return self.inner.transmit_output(held + amount, timeout);
        }
        // Both do not fit in the buffer: the held bytes first, then this output.
        let this = output[..amount].to_vec();
        self.flush(timeout)?;
        self.inner.buffers().output()[..amount].copy_from_slice(&this);
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        // Nothing may be waited for while the request is not all sent.
        self.flush(timeout)?;
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.flush(timeout)?;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::unversioned::transport::LazyBuffers;

    /// Records each write it is asked to make.
    #[derive(Debug)]
    struct Recorder {
        buffers: LazyBuffers,
        writes: Vec<Vec<u8>>,
        awaited: usize,
    }

    impl Recorder {
        fn new(output: usize) -> Recorder {
            Recorder {
                buffers: LazyBuffers::new(1024, output),
                writes: Vec::new(),
                awaited: 0,
            }
        }
    }

    impl Transport for Recorder {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, amount: usize, _: NextTimeout) -> Result<(), Error> {
            let output = self.buffers.output();
            self.writes.push(output[..amount].to_vec());
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, Error> {
            self.awaited += 1;
            Ok(false)
        }
        fn is_open(&mut self) -> bool {
            true
        }
    }

    fn timeout() -> NextTimeout {
        NextTimeout::default()
    }

    /// Writes `bytes` into the transport's output buffer and transmits them, as ureq does.
    fn put(t: &mut Corked<Recorder>, bytes: &[u8]) {
        t.buffers().output()[..bytes.len()].copy_from_slice(bytes);
        t.transmit_output(bytes.len(), timeout()).unwrap();
    }

    fn corked(output: usize) -> Corked<Recorder> {
        Corked {
            inner: Recorder::new(output),
            held: Vec::new(),
        }
    }

    #[test]
    fn a_head_and_a_small_body_go_out_in_one_write_before_the_answer_is_read() {
        let mut t = corked(4096);
        put(&mut t, b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n");
        assert!(t.inner.writes.is_empty(), "the head waits for the body");
        put(&mut t, b"{..}");
        t.await_input(timeout()).unwrap();
        assert_eq!(
            t.inner.writes,
            vec![b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n{..}".to_vec()]
        );
        assert_eq!(t.inner.awaited, 1);
    }

    #[test]
    fn what_is_held_is_sent_before_any_wait_for_input() {
        let mut t = corked(4096);
        put(&mut t, b"GET / HTTP/1.1\r\n\r\n");
        t.maybe_await_input(timeout()).unwrap();
        assert_eq!(t.inner.writes, vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()]);
    }

    #[test]
    fn outputs_too_large_to_join_go_out_in_order() {
        let mut t = corked(64);
        put(&mut t, &[b'h'; 40]);
        put(&mut t, &[b'b'; 60]);
        put(&mut t, &[b'c'; 10]);
        t.await_input(timeout()).unwrap();
        assert_eq!(
            t.inner.writes,
            vec![vec![b'h'; 40], vec![b'b'; 60], vec![b'c'; 10]]
        );
    }
}
