//! Every API error, and the one conversion to the JSON body of SPEC §2:
//! `{"error": {"code": "...", "message": "..."}}`.

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_json", message)
    }

    /// A bad field; the message must name it.
    pub fn field(name: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError::new(400, "invalid_field", format!("`{name}` {problem}"))
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            401,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(404, "not_found", format!("{what} not found"))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(409, code, message)
    }

    pub fn too_large(max: usize) -> ApiError {
        ApiError::new(
            413,
            "payload_too_large",
            format!("the request body is larger than {max} bytes"),
        )
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            415,
            "unsupported_media_type",
            "the body must be JSON with `Content-Type: application/json`",
        )
    }

    pub fn request_timeout() -> ApiError {
        ApiError::new(
            408,
            "request_timeout",
            "the request body did not arrive in time",
        )
    }

    pub fn rate_limited(retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                429,
                "rate_limited",
                "too many requests for this key; retry after the time in Retry-After",
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(503, "unavailable", message)
        }
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            500,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict(m) => ApiError::conflict("conflict", m),
            StoreError::Rejected(m) => ApiError::new(400, "invalid_field", m),
            StoreError::Busy => ApiError::unavailable("the server is busy; try again"),
            StoreError::KeyRevoked => ApiError::unauthorized(),
            other => {
                log::error!("store: {other}");
                ApiError::unavailable("the database is unavailable; try again")
            }
        }
    }
}
