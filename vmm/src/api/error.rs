//! Errors of the API. They are shared with the daemon's API and live in
//! [`crate::http::error`]: per request [`ApiError`] (an HTTP status and
//! `{"fault_message": "..."}`), at start-up [`ApiServerError`].

pub use crate::http::error::ApiError;
pub use crate::http::error::ServerError as ApiServerError;
