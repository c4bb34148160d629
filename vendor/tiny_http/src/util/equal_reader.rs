use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

// hookd patch: an unread body is drained through a fixed buffer, and only up to
// `MAX_DRAIN` bytes; past that the connection is marked `poisoned` and closed by
// `ClientConnection` instead of being drained. Upstream allocates the whole remaining
// `Content-Length` at once, so `Content-Length: 1000000000000` aborted the process.
const DRAIN_BUFFER: usize = 16 * 1024;
const MAX_DRAIN: usize = 1024 * 1024;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    poisoned: Arc<AtomicBool>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(
        reader: R,
        size: usize,
        poisoned: Arc<AtomicBool>,
    ) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            poisoned,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        if self.size > MAX_DRAIN {
            self.poisoned.store(true, Ordering::SeqCst);
            self.last_read_signal.send(Ok(())).ok();
            return;
        }
        let mut buf = [0u8; DRAIN_BUFFER];
        while self.size > 0 {
            let want = self.size.min(DRAIN_BUFFER);
            match self.reader.read(&mut buf[..want]) {
                Err(e) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    self.last_read_signal.send(Err(e)).ok();
                    return;
                }
                Ok(0) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    break;
                }
                Ok(n) => self.size -= n,
            }
        }
        self.last_read_signal.send(Ok(())).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5, Default::default());

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5, Default::default());

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
