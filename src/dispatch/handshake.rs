//! Intent verification (SPEC §5): before a target receives events, it proves it wants
//! them by returning a fresh code. Runs through the same guarded client as deliveries,
//! with the delivery timeout.

use ureq::Agent;

use super::client;

/// Runs handshakes for the API, which does not touch the HTTP client itself.
#[derive(Clone)]
pub struct Verifier {
    agent: Agent,
}

impl Verifier {
    pub fn new(agent: Agent) -> Verifier {
        Verifier { agent }
    }

    pub fn verify(&self, url: &str, hook_id: &str, code: &str) -> Result<(), String> {
        verify(&self.agent, url, hook_id, code)
    }
}

/// A fresh handshake code: 24 random bytes, hex.
pub fn new_code() -> String {
    let mut b = [0u8; 24];
    crate::ids::random_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends the handshake to `url`; `Ok` when the answer is 2xx and carries the code back
/// (as the `X-Hook-Secret` header, as `{"code": …}`, or as the whole body), otherwise
/// why not, in words for the API response.
pub fn verify(agent: &Agent, url: &str, hook_id: &str, code: &str) -> Result<(), String> {
    let body = serde_json::json!({"type": "hook.verify", "hook_id": hook_id, "code": code});
    let headers = [("x-hook-secret", code.to_string())];
    let answer = client::post(agent, url, &headers, body.to_string().as_bytes())
        .map_err(|e| format!("the handshake request failed: {e}"))?;
    if !(200..300).contains(&answer.code) {
        return Err(format!(
            "the target answered the handshake with {}",
            answer.code
        ));
    }
    let echoed_header = answer.hook_secret.as_deref().map(str::trim) == Some(code);
    let text = String::from_utf8_lossy(&answer.body);
    let echoed_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(|c| c == code))
        .unwrap_or(false);
    let echoed_body = text.trim() == code;
    if echoed_header || echoed_json || echoed_body {
        Ok(())
    } else {
        Err(format!(
            "the target answered {} but did not return the code (as the X-Hook-Secret \
             header, as {{\"code\": …}}, or as the body)",
            answer.code
        ))
    }
}
