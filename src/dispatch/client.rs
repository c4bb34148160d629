//! The HTTP client for deliveries: a ureq agent per dispatcher thread (and one shared
//! by the handshakes), with keep-alive, explicit timeouts, no redirects and no proxy
//! from the environment. Turns whatever happens into an [`AttemptResult`]; nothing
//! here returns an error upward.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Connector, DefaultConnector, NextTimeout};
use ureq::Agent;

use super::cork::Corking;
use crate::target::Policy;

use crate::clock::now_ms;
use crate::retry::{parse_retry_after, Outcome};

/// How much of a response body is read; the rest is left unread.
pub const RESPONSE_CAP: u64 = 64 * 1024;
/// How much of it the delivery log keeps.
pub const SNIPPET_CAP: usize = 1024;

pub struct AttemptResult {
    pub outcome: Outcome,
    pub attempt: crate::model::Attempt,
}

/// A target refused by the private-target guard at connect time.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "target refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves a target once and checks every address; ureq then connects only to the
/// addresses returned here, so a name that changes after the check cannot slip a
/// private address in (DNS rebinding). A failed lookup is a failed attempt.
#[derive(Debug)]
struct GuardedResolver {
    policy: Arc<Policy>,
    inner: DefaultResolver,
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri.authority().ok_or(ureq::Error::HostNotFound)?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let fixed = bare.parse::<std::net::IpAddr>().is_ok()
            || self
                .policy
                .overrides
                .contains_key(&bare.trim_end_matches('.').to_ascii_lowercase());
        let addrs: Vec<SocketAddr> = if fixed {
            self.policy
                .resolve(host, port)
                .map_err(|e| ureq::Error::Other(Box::new(Refused(e))))?
        } else {
            // The default resolver runs the lookup with the attempt's timeout.
            self.inner
                .resolve(uri, config, timeout)?
                .iter()
                .copied()
                .collect()
        };
        let mut out = self.empty();
        for addr in addrs {
            self.policy
                .check_ip(addr.ip())
                .map_err(|e| ureq::Error::Other(Box::new(Refused(e))))?;
            out.push(addr);
        }
        Ok(out)
    }
}

/// How the delivery clients are built: the shared one (handshakes) and one per
/// dispatcher thread.
#[derive(Clone)]
pub struct Client {
    pub timeout: Duration,
    pub policy: Policy,
}

/// Hosts a dispatcher keeps an idle connection to.
const DISPATCHER_IDLE_HOSTS: usize = 16;

impl Client {
    /// A shared client whose pool keeps `per_host` idle connections to each host.
    pub fn shared(&self, per_host: usize) -> Agent {
        build(self.timeout, per_host, per_host * 4, self.policy.clone())
    }

    /// The client of one dispatcher thread. A dispatcher sends one request at a time,
    /// so one idle connection per host is all it reuses. ureq searches its pool from
    /// end to end on every request; with one pool for all dispatchers that search
    /// (and its purge) ran over every dispatcher's connections each time.
    pub fn dispatcher_agent(&self) -> Agent {
        build(self.timeout, 1, DISPATCHER_IDLE_HOSTS, self.policy.clone())
    }
}

fn build(timeout: Duration, per_host: usize, idle: usize, policy: Policy) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        // A 3xx is an answer, not an instruction: following it could lead anywhere.
        .max_redirects(0)
        // ureq reads *_PROXY by default; a proxy would resolve targets for us.
        .proxy(None)
        .timeout_global(Some(timeout))
        .max_idle_connections_per_host(per_host)
        .max_idle_connections(idle)
        // Every pooled connection keeps its buffers (128 KiB each way by default): at
        // the sizes below a full pool costs a few MB instead of tens. Responses are read
        // only up to a snippet, and a larger body is written in more than one piece.
        .input_buffer_size(16 * 1024)
        .output_buffer_size(32 * 1024)
        .user_agent(format!("hookd/{}", env!("CARGO_PKG_VERSION")))
        .build();
    let resolver = GuardedResolver {
        policy: Arc::new(policy),
        inner: DefaultResolver::default(),
    };
    Agent::with_parts(config, DefaultConnector::new().chain(Corking), resolver)
}

/// What came back from a POST: status, headers we care about, the body's first 64 KiB.
pub struct Answer {
    pub code: u16,
    pub retry_after: Option<String>,
    pub hook_secret: Option<String>,
    pub body: Vec<u8>,
}

/// POSTs `body` as JSON; `Err` describes a transport failure (timeout, refused…).
pub fn post(
    agent: &Agent,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut request = agent.post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let mut response = request.send(body).map_err(|e| describe(&e))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (retry_after, hook_secret) = (header("retry-after"), header("x-hook-secret"));
    // What the receiver said after its status is for the log only: a body that fails
    // half way does not turn a 2xx into a failure.
    let mut buf = Vec::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(RESPONSE_CAP)
        .read_to_end(&mut buf);
    Ok(Answer {
        code: response.status().as_u16(),
        retry_after,
        hook_secret,
        body: buf,
    })
}

/// Sends one delivery request and describes what happened.
pub fn send(agent: &Agent, url: &str, headers: &[(&str, String)], body: &[u8]) -> AttemptResult {
    let at = now_ms();
    let started = Instant::now();
    let (outcome, status_code, error, snippet) = match post(agent, url, headers, body) {
        Ok(answer) => {
            let code = answer.code;
            let retry_after = if code == 429 || code == 503 {
                answer.retry_after.and_then(|v| parse_retry_after(&v, at))
            } else {
                None
            };
            (
                Outcome::Status { code, retry_after },
                Some(code),
                None,
                snippet(&answer.body),
            )
        }
        Err(e) => (Outcome::Error, None, Some(e), None),
    };
    AttemptResult {
        outcome,
        attempt: crate::model::Attempt {
            at,
            status_code,
            error,
            duration_ms: started.elapsed().as_millis() as i64,
            response_snippet: snippet,
        },
    }
}

fn snippet(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_CAP)]);
    Some(text.into_owned())
}

fn describe(e: &ureq::Error) -> String {
    let text = match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::Other(inner) => inner.to_string(),
        other => other.to_string(),
    };
    text.chars().take(500).collect()
}
