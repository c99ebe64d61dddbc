//! The server's one error type: every failure of a request becomes a
//! status code and a JSON body `{"error": "..."}`.
//!
//! Client mistakes get a 4xx with a message saying what to fix. Internal
//! failures (the database) are logged in full and answered with a 500 or
//! 503 whose message names no internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::metadata::MetadataError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or bad ones (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such route (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Contradicts stored data (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than `max_body_bytes` (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Another client error with its own status (from a body rejection).
    #[error("{message}")]
    Client {
        /// A 4xx status.
        status: StatusCode,
        /// What went wrong.
        message: String,
    },
    /// The server cannot answer now (e.g. the request took too long);
    /// retrying later may work (503).
    #[error("{0}")]
    Unavailable(String),
    /// The database cannot be reached or failed (503 for health checks,
    /// 500 otherwise); the detail is logged, not shown.
    #[error("metadata database: {0}")]
    Database(#[source] MetadataError),
    /// Anything else that is our fault (500); logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Client { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to the client.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Database(_) => {
                "the metadata database failed; the request can be retried (details are in the \
                 server log)"
                    .to_owned()
            }
            ApiError::Internal(_) => {
                "internal server error (details are in the server log)".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<MetadataError> for ApiError {
    fn from(e: MetadataError) -> ApiError {
        match e {
            MetadataError::BadRequest(m) => ApiError::BadRequest(m),
            MetadataError::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Database(other),
        }
    }
}

/// The JSON body of an error response.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(%status, error = %self, "request refused");
        }
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.public_message(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tabacco metadb\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_and_hide_internals() {
        let e: ApiError = MetadataError::BadRequest("bad pattern".into()).into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.public_message(), "bad pattern");
        let e: ApiError = MetadataError::Conflict("other host".into()).into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let e: ApiError = MetadataError::Io {
            context: "secret path /x".into(),
            source: std::io::Error::other("boom"),
        }
        .into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.public_message().contains("secret"));
        assert!(e.to_string().contains("secret path"), "logged in full");
    }
}
