//! Just enough HTTP/1.1 for the benchmark, over plain keep-alive `TcpStream`s: a client
//! connection that writes prepared request bytes and reads back a status and a body, and
//! the message-head parsing the loopback receiver shares with it.
//!
//! It is deliberately not a general client: it exists because a general one (ureq) costs
//! more CPU per request than hookd's own request handling, and the load generator must
//! not be what the benchmark measures. It knows `Content-Length` and chunked bodies and
//! nothing else; it must not be used to talk to anything but loopback peers we control.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest message head accepted; anything longer is a protocol error here.
const MAX_HEAD: usize = 64 * 1024;

/// How long a read may block before the connection is declared dead.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the head of the message in `buf` ends (just past the blank line), if it does.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A parsed message head: the start line and the header fields, borrowed from the buffer.
pub struct Head<'a> {
    pub start: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Head<'a> {
    pub fn parse(raw: &'a [u8]) -> io::Result<Head<'a>> {
        let text = std::str::from_utf8(raw).map_err(|_| bad("the message head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or("");
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim(), v.trim()))
            .collect();
        Ok(Head { start, headers })
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// How the body is framed.
    pub fn framing(&self) -> io::Result<Framing> {
        if self
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.get("content-length") {
            Some(v) => v
                .parse()
                .map(Framing::Length)
                .map_err(|_| bad("a bad Content-Length")),
            None => Ok(Framing::Length(0)),
        }
    }

    /// `Connection: close` was asked for.
    pub fn closes(&self) -> bool {
        self.get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

pub enum Framing {
    Length(usize),
    Chunked,
}

pub fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A read buffer over a stream: bytes in `buf[pos..len]` are read but not consumed.
pub struct Buffered {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Buffered {
    pub fn new(stream: TcpStream) -> Buffered {
        Buffered {
            stream,
            buf: vec![0; 16 * 1024],
            pos: 0,
            len: 0,
        }
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            let grown = self.buf.len() * 2;
            self.buf.resize(grown, 0);
        }
        let n = self.stream.read(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(n > 0)
    }

    /// The next message head, consumed; `Ok(None)` on a clean end of stream between
    /// messages. Returns the raw head bytes.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = head_end(&self.buf[self.pos..self.len]) {
                let head = self.buf[self.pos..self.pos + end].to_vec();
                self.pos += end;
                return Ok(Some(head));
            }
            if self.len - self.pos > MAX_HEAD {
                return Err(bad("the message head is too long"));
            }
            if !self.fill()? {
                return if self.len == self.pos {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Makes sure `n` unconsumed bytes are buffered.
    fn want(&mut self, n: usize) -> io::Result<()> {
        while self.len - self.pos < n {
            if self.pos + n > self.buf.len() && self.pos > 0 {
                // Compact first so the buffer only grows when the message needs it.
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            }
            if self.pos + n > self.buf.len() {
                self.buf.resize(self.pos + n, 0);
            }
            let read = self.stream.read(&mut self.buf[self.len..])?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.len += read;
        }
        Ok(())
    }

    /// One CRLF-terminated line (without the CRLF), consumed.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(p) = self.buf[self.pos..self.len]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + p]).into_owned();
                self.pos += p + 2;
                return Ok(line);
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The body with this framing, appended to `out`.
    pub fn read_body(&mut self, framing: Framing, out: &mut Vec<u8>) -> io::Result<()> {
        match framing {
            Framing::Length(n) => {
                self.want(n)?;
                out.extend_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
            }
            Framing::Chunked => loop {
                let size_line = self.line()?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad("a bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the blank line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                self.want(size + 2)?;
                out.extend_from_slice(&self.buf[self.pos..self.pos + size]);
                self.pos += size + 2;
            },
        }
        Ok(())
    }
}

/// A keep-alive client connection.
pub struct Conn {
    addr: SocketAddr,
    io: Buffered,
    /// The body of the last response.
    pub body: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            addr,
            io: Buffered::new(stream),
            body: Vec::new(),
        })
    }

    /// Writes one prepared request and reads its response; the body is left in
    /// `self.body`. A connection the server closed is reopened once, and the request is
    /// sent again on it.
    pub fn round_trip(&mut self, request: &[u8]) -> io::Result<u16> {
        match self.try_round_trip(request) {
            Ok(status) => Ok(status),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                *self = Conn::connect(self.addr)?;
                self.try_round_trip(request)
            }
            Err(e) => Err(e),
        }
    }

    fn try_round_trip(&mut self, request: &[u8]) -> io::Result<u16> {
        self.io.stream.write_all(request)?;
        let head = self.io.read_head()?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let head = Head::parse(&head)?;
        let status = head
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("a bad status line"))?;
        self.body.clear();
        let framing = if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            head.framing()?
        };
        self.io.read_body(framing, &mut self.body)?;
        if head.closes() {
            *self = Conn::connect(self.addr)?;
        }
        Ok(status)
    }

    /// A one-off API call (setup and checks, not measured).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&serde_json::Value>,
    ) -> io::Result<(u16, serde_json::Value)> {
        let body = body.map(|b| b.to_string());
        let request = prepare(method, self.addr, path, token, body.as_deref());
        let status = self.round_trip(&request)?;
        let value = if self.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
        };
        Ok((status, value))
    }
}

/// The bytes of one request, built once and written as often as needed.
pub fn prepare(
    method: &str,
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !token.is_empty() {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    match body {
        Some(b) => out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out.into_bytes()
}

/// Every `"id":"…"` value in a publish response, in order (one for a single publish,
/// one per event for an array). Cheaper than parsing the JSON, which matters at the
/// rates the generator runs at.
pub fn ids_in(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    const KEY: &[u8] = b"\"id\":\"";
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at + body[at..].windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
        let len = body[start..].iter().position(|&b| b == b'"')?;
        at = start + len;
        Some(&body[start..start + len])
    })
}

/// A stable 64-bit fingerprint of an id (FNV-1a): the benchmark compares sets of events
/// by fingerprint instead of keeping millions of id strings.
pub fn fingerprint(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_id_in_a_publish_response() {
        let single = br#"{"id":"evt_1","deliveries":1}"#;
        assert_eq!(ids_in(single).collect::<Vec<_>>(), vec![&b"evt_1"[..]]);
        let array = br#"[{"id":"evt_1","deliveries":1},{"id":"evt_2","deliveries":0}]"#;
        assert_eq!(
            ids_in(array).collect::<Vec<_>>(),
            vec![&b"evt_1"[..], &b"evt_2"[..]]
        );
        assert_eq!(ids_in(b"{}").count(), 0);
    }

    #[test]
    fn parses_a_head() {
        let raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\nconnection: Close\r\n\r\n";
        assert_eq!(head_end(raw), Some(raw.len()));
        let head = Head::parse(raw).unwrap();
        assert_eq!(head.start, "HTTP/1.1 202 Accepted");
        assert!(matches!(head.framing().unwrap(), Framing::Length(12)));
        assert!(head.closes());
    }
}
