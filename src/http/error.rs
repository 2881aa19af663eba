//! `{"error": {"code", "message", ...}}`: the one shape of every error response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::Error;
use crate::catalog::Subject;

/// An error answer: a status, a stable machine-readable code, a message, and details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_retry_after(self, seconds: u64) -> ApiError {
        self.with("retry_after_seconds", seconds)
    }

    /// For responses produced below the handlers (limits, timeouts, routing).
    pub fn from_status(status: StatusCode, message: String) -> ApiError {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::UNAUTHORIZED => "unauthorized",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        error.extend(self.details);
        super::json_response(self.status, &serde_json::json!({ "error": error }))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let message = error.to_string();
        match error {
            Error::Definition(e) => {
                let subject = match &e.subject {
                    Subject::File => serde_json::json!({"kind": "file"}),
                    Subject::Stream(name) => serde_json::json!({"kind": "stream", "name": name}),
                    Subject::Feature(name) => serde_json::json!({"kind": "feature", "name": name}),
                };
                let error =
                    ApiError::bad_request("invalid_definition", message).with("subject", subject);
                match e.key {
                    Some(key) => error.with("key", key),
                    None => error,
                }
            }
            Error::Event(e) => {
                let error = ApiError::bad_request("invalid_event", message).with("index", e.index);
                match e.field {
                    Some(field) => error.with("field", field),
                    None => error,
                }
            }
            Error::UnknownStream(name) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_stream", message).with("stream", name)
            }
            Error::UnknownFeature(name) => {
                ApiError::bad_request("unknown_feature", message).with("feature", name)
            }
            Error::BatchTooLarge { len, max } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", message)
                    .with("events", len)
                    .with("max", max)
            }
            Error::Time(_) => ApiError::bad_request("invalid_time", message),
            Error::Log(fsdb_storage::LogError::Poisoned { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .with_retry_after(30)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}
