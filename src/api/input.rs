//! Reading request input: the body (capped while reading), JSON objects with field-named
//! errors, query strings (parsed by the `url` crate), list parameters.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tiny_http::Request;

use super::error::ApiError;

/// Reads the body, refusing (413) as soon as it passes `max`, without buffering more,
/// and (408) when it has not all arrived by `deadline`. Bodies up to 1 MiB were already
/// read ahead by the connection's thread (vendor/tiny_http/HOOKD-PATCHES.md), so this
/// only waits on larger or chunked ones.
pub fn read_body(
    request: &mut Request,
    max: usize,
    deadline: Duration,
) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|n| n > max) {
        return Err(ApiError::too_large(max));
    }
    let until = Instant::now() + deadline;
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let reader = request.as_reader();
    loop {
        if Instant::now() > until {
            return Err(ApiError::request_timeout());
        }
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                body.extend_from_slice(&chunk[..n]);
                if body.len() > max {
                    return Err(ApiError::too_large(max));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ApiError::request_timeout())
            }
            Err(e) => {
                return Err(ApiError::invalid_json(format!(
                    "could not read the body: {e}"
                )))
            }
        }
    }
    Ok(body)
}

/// A non-empty body must be declared JSON.
pub fn check_json_content_type(request: &Request, body: &[u8]) -> Result<(), ApiError> {
    if body.is_empty() {
        return Ok(());
    }
    let ct = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_ascii_lowercase());
    match ct {
        Some(v) if v.split(';').next().map(str::trim) == Some("application/json") => Ok(()),
        _ => Err(ApiError::unsupported_media_type()),
    }
}

pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_json(
            "the body is empty; a JSON value is required",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_json(format!("the body is not valid JSON: {e}")))
}

/// A JSON object whose fields are taken one by one; `finish` refuses any left over.
pub struct Fields {
    map: Map<String, Value>,
    /// Prefix for field names in messages, e.g. `[3].` inside an array.
    path: String,
}

impl Fields {
    pub fn new(value: Value, path: &str) -> Result<Fields, ApiError> {
        match value {
            Value::Object(map) => Ok(Fields {
                map,
                path: path.to_string(),
            }),
            _ => Err(ApiError::invalid_json(if path.is_empty() {
                "the body must be a JSON object".to_string()
            } else {
                format!("`{}` must be a JSON object", path.trim_end_matches('.'))
            })),
        }
    }

    pub fn name(&self, field: &str) -> String {
        format!("{}{field}", self.path)
    }

    pub fn take(&mut self, field: &str) -> Option<Value> {
        self.map.remove(field).filter(|v| !v.is_null())
    }

    pub fn take_raw(&mut self, field: &str) -> Option<Value> {
        self.map.remove(field)
    }

    pub fn string(&mut self, field: &str) -> Result<Option<String>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::field(&self.name(field), "must be a string")),
        }
    }

    pub fn required_string(&mut self, field: &str) -> Result<String, ApiError> {
        self.string(field)?
            .ok_or_else(|| ApiError::field(&self.name(field), "is required"))
    }

    pub fn bool(&mut self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(ApiError::field(&self.name(field), "must be true or false")),
        }
    }

    pub fn integer(&mut self, field: &str, min: u32, max: u32) -> Result<Option<u32>, ApiError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|n| (u64::from(min)..=u64::from(max)).contains(n))
                .map(|n| Some(n as u32))
                .ok_or_else(|| {
                    ApiError::field(
                        &self.name(field),
                        format!("must be an integer from {min} to {max}"),
                    )
                }),
        }
    }

    /// Refuses unknown fields, so that a typo is an error rather than silently ignored.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.map.keys().next() {
            Some(k) => Err(ApiError::field(&self.name(k), "is not a known field")),
            None => Ok(()),
        }
    }
}

/// Query parameters of a URL such as `/v1/events?type=a&limit=3`.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(url: &str) -> Query {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
        Query(
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` (default 50, 1..=500) and the `after` cursor.
    pub fn page(&self) -> Result<(u32, String), ApiError> {
        let limit = match self.get("limit") {
            None => 50,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 500"))?,
        };
        Ok((limit, self.get("after").unwrap_or("").to_string()))
    }
}

/// A tenant name: 1..=100 characters of letters, digits, `_`, `-`, `.`.
pub fn validate_tenant(name: &str, tenant: &str) -> Result<(), ApiError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 100
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            name,
            "must be 1 to 100 letters, digits, `_`, `-` or `.`",
        ))
    }
}

/// `{"data": [...], "next": cursor|null}` from up to `limit + 1` items.
pub fn page_json<T>(
    mut items: Vec<T>,
    limit: u32,
    render: impl Fn(&T) -> Value,
    cursor: impl Fn(&T) -> String,
) -> Value {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(|t| Value::String(cursor(t)))
    } else {
        None
    };
    serde_json::json!({
        "data": items.iter().map(render).collect::<Vec<_>>(),
        "next": next,
    })
}
