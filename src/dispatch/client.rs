//! The HTTP client for deliveries: one ureq agent shared by every dispatcher, with
//! keep-alive, explicit timeouts, no redirects and no proxy from the environment. Turns
//! whatever happens into an [`AttemptResult`]; nothing here returns an error upward.

use std::io::Read;
use std::time::{Duration, Instant};

use ureq::Agent;

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

pub fn agent(timeout: Duration, pool: usize) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        // A 3xx is an answer, not an instruction: following it could lead anywhere.
        .max_redirects(0)
        // ureq reads *_PROXY by default; a proxy would resolve targets for us.
        .proxy(None)
        .timeout_global(Some(timeout))
        .max_idle_connections_per_host(pool)
        .max_idle_connections(pool * 4)
        .user_agent(format!("hookd/{}", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::new_with_config(config)
}

/// Sends one delivery request and describes what happened.
pub fn send(agent: &Agent, url: &str, headers: &[(&str, String)], body: &[u8]) -> AttemptResult {
    let at = now_ms();
    let started = Instant::now();
    let mut request = agent.post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let (outcome, status_code, error, snippet) = match request.send(body) {
        Ok(mut response) => {
            let code = response.status().as_u16();
            let retry_after = if code == 429 || code == 503 {
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, at))
            } else {
                None
            };
            // What the receiver said after its status is for the log only: a body that
            // fails half way does not turn a 2xx into a failure.
            let mut buf = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(RESPONSE_CAP)
                .read_to_end(&mut buf);
            (
                Outcome::Status { code, retry_after },
                Some(code),
                None,
                snippet(&buf),
            )
        }
        Err(e) => (Outcome::Error, None, Some(describe(&e)), None),
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
        other => other.to_string(),
    };
    text.chars().take(500).collect()
}
