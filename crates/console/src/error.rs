//! Console errors: an HTML page with the status code, or a redirect to the login page.

use alchemiscale_store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use crate::layout;

#[derive(Debug)]
pub enum ConsoleError {
    /// No live session: back to the login page.
    LoginRequired,
    /// A state-changing form without this session's CSRF token.
    Csrf,
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    TooManyRequests(String),
    Store(StoreError),
}

pub type ConsoleResult<T> = Result<T, ConsoleError>;

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ConsoleError::NotFound("No such object in the database.".into()),
            StoreError::Invalid(m) | StoreError::Conflict(m) => ConsoleError::BadRequest(m),
            StoreError::Chain(e) => ConsoleError::BadRequest(e.to_string()),
            other => ConsoleError::Store(other),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ConsoleError::LoginRequired => return Redirect::to("/ui/login").into_response(),
            ConsoleError::Csrf => (
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this console. Reload the page and try again.".to_string(),
            ),
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ConsoleError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ConsoleError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ConsoleError::Store(e) => {
                let status = match e {
                    StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                tracing::error!(error = %e, "console request failed");
                (status, "The state store could not answer; try again shortly.".to_string())
            }
        };
        (status, layout::error_page(status, &message)).into_response()
    }
}
