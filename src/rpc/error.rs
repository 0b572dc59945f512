//! JSON-RPC error codes and the one conversion from rpchub's errors to error objects.
//!
//! Standard codes come from the JSON-RPC 2.0 specification; rpchub's own carry
//! `data: {"code": NAME}` so that clients can switch on a stable name.

use crate::hub::HubError;
use crate::session::SubscribeError;
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned};
use serde_json::json;

/// Invalid JSON was received.
pub const PARSE_ERROR: i32 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i32 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i32 = -32603;
/// Missing or insufficient credentials.
pub const UNAUTHORIZED: i32 = -32001;
/// A subscription could not be made.
pub const SUBSCRIPTION_FAILED: i32 = -32002;
/// Too many calls.
pub const RATE_LIMITED: i32 = -32003;
/// Something named does not exist.
pub const NOT_FOUND: i32 = -32004;
/// Well-formed but unacceptable input (a bad channel name, a subscription over HTTP, ...).
pub const UNACCEPTABLE: i32 = -32005;
/// A client message over the size limit.
pub const MESSAGE_TOO_BIG: i32 = -32007;
/// A shared broker cannot be reached: publish, subscribe and history fail fast with it until it
/// is back (`GET /health` answers 503 meanwhile).
pub const BROKER_UNAVAILABLE: i32 = -32008;
/// A proxied method's backend answered with an error object.
pub const BACKEND_ERROR: i32 = -32020;
/// The backend (of a proxied method or a permission check) or the upstream node gave no usable
/// answer.
pub const BACKEND_UNAVAILABLE: i32 = -32021;

/// The name of error `code` as the `/ws` dialects give it (a string `code`): rpchub's own carry
/// it as `data.code`, so this is for the standard ones JSON-RPC 2.0 defines.
pub fn standard_name(code: i64) -> &'static str {
    match i32::try_from(code) {
        Ok(PARSE_ERROR) => "parse_error",
        Ok(INVALID_REQUEST) => "invalid_request",
        Ok(METHOD_NOT_FOUND) => "method_not_found",
        Ok(INVALID_PARAMS) => "invalid_params",
        _ => "internal_error",
    }
}

/// rpchub's errors, each a code and a message that says what to change.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// -32001 `unauthorized`.
    #[error("{0}")]
    Unauthorized(String),
    /// -32002 `subscription_failed`.
    #[error("{0}")]
    SubscriptionFailed(String),
    /// -32003 `rate_limited`.
    #[error("{0}")]
    RateLimited(String),
    /// -32004 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// -32005 `invalid_request`.
    #[error("{0}")]
    Unacceptable(String),
    /// -32021 `backend_unavailable`: a permission check the backend must answer got no usable
    /// answer (down, slow, 5xx, malformed).
    #[error("{0}")]
    BackendUnavailable(String),
    /// -32008 `broker_unavailable`: the shared broker cannot be reached; retry once it is back.
    #[error("{0}")]
    BrokerUnavailable(String),
    /// -32602, for a param of the right type out of its bounds.
    #[error("{0}")]
    InvalidParams(String),
    /// -32603, for failures that are the server's fault.
    #[error("{0}")]
    Internal(String),
}

impl RpcError {
    /// The code and its name.
    pub fn code(&self) -> (i32, &'static str) {
        match self {
            RpcError::Unauthorized(_) => (UNAUTHORIZED, "unauthorized"),
            RpcError::SubscriptionFailed(_) => (SUBSCRIPTION_FAILED, "subscription_failed"),
            RpcError::RateLimited(_) => (RATE_LIMITED, "rate_limited"),
            RpcError::NotFound(_) => (NOT_FOUND, "not_found"),
            RpcError::Unacceptable(_) => (UNACCEPTABLE, "invalid_request"),
            RpcError::BackendUnavailable(_) => (BACKEND_UNAVAILABLE, "backend_unavailable"),
            RpcError::BrokerUnavailable(_) => (BROKER_UNAVAILABLE, "broker_unavailable"),
            RpcError::InvalidParams(_) => (INVALID_PARAMS, "invalid_params"),
            RpcError::Internal(_) => (INTERNAL_ERROR, "internal_error"),
        }
    }

    /// The error of a permission check the backend refused (-32001 with the backend's message)
    /// or could not answer (-32021). A proxied method's refusal is -32020 instead ([`backend`]).
    pub fn from_check(e: crate::backend::BackendError) -> RpcError {
        use crate::backend::BackendError;
        match e {
            BackendError::Refused { message, .. } => RpcError::Unauthorized(message),
            BackendError::Unavailable(m) => RpcError::BackendUnavailable(m),
        }
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(e: RpcError) -> Self {
        let (code, name) = e.code();
        if code == INTERNAL_ERROR || code == INVALID_PARAMS {
            return ErrorObject::owned(code, e.to_string(), None::<()>);
        }
        ErrorObject::owned(code, e.to_string(), Some(json!({ "code": name })))
    }
}

impl From<HubError> for RpcError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::InvalidChannel(m) => RpcError::Unacceptable(format!("invalid channel: {m}")),
            HubError::Broker(crate::broker::BrokerError::Full(n)) => RpcError::SubscriptionFailed(format!(
                "this node already holds its maximum of {n} channels (limits.max_channels)"
            )),
            HubError::Broker(e @ crate::broker::BrokerError::Unavailable(_)) => {
                RpcError::BrokerUnavailable(e.to_string())
            }
            HubError::Broker(crate::broker::BrokerError::Unsupported(m)) => RpcError::Unacceptable(m),
            HubError::TooManyChannels(_) | HubError::ConnectionClosed | HubError::Busy => {
                RpcError::SubscriptionFailed(e.to_string())
            }
        }
    }
}

impl From<SubscribeError> for RpcError {
    fn from(e: SubscribeError) -> Self {
        match e {
            SubscribeError::Unauthorized(m) => RpcError::Unauthorized(m),
            SubscribeError::Limit(_) | SubscribeError::AnonymousShare(_) => {
                RpcError::SubscriptionFailed(e.to_string())
            }
            SubscribeError::NoSocket => RpcError::Unacceptable(e.to_string()),
            SubscribeError::InvalidParams(m) => RpcError::InvalidParams(m),
            SubscribeError::Unacceptable(m) => RpcError::Unacceptable(m),
            SubscribeError::Hub(h) => h.into(),
            SubscribeError::Backend(b) => RpcError::from_check(b),
        }
    }
}

impl From<RpcError> for crate::rpc::api::ItemError {
    fn from(e: RpcError) -> Self {
        let o = ErrorObjectOwned::from(e);
        crate::rpc::api::ItemError {
            code: o.code(),
            message: o.message().to_string(),
            data: o.data().and_then(|d| serde_json::from_str(d.get()).ok()),
        }
    }
}

/// -32602 with a message that says which param is wrong and how.
pub fn invalid_params(message: String) -> ErrorObjectOwned {
    ErrorObject::owned(INVALID_PARAMS, message, None::<()>)
}

/// The error object of a failed request to the backend or the upstream node: -32020
/// `backend_error` with `data.code` the backend's own code, or -32021 `backend_unavailable`.
pub fn backend(e: &crate::backend::BackendError) -> ErrorObjectOwned {
    use crate::backend::BackendError;
    match e {
        BackendError::Refused { code, message } => {
            ErrorObject::owned(BACKEND_ERROR, message.clone(), Some(json!({ "code": code })))
        }
        BackendError::Unavailable(m) => {
            ErrorObject::owned(BACKEND_UNAVAILABLE, m.clone(), Some(json!({"code": "backend_unavailable"})))
        }
    }
}

/// -32007 `message_too_big`: `data` is `{"code":"message_too_big","detail":...}`, the detail
/// naming the limit and its config key.
pub fn too_big(message: &str, detail: String) -> ErrorObjectOwned {
    ErrorObject::owned(
        MESSAGE_TOO_BIG,
        message.to_string(),
        Some(json!({"code": "message_too_big", "detail": detail})),
    )
}

/// A standard error object with a fixed message.
pub fn standard(code: i32) -> ErrorObjectOwned {
    let message = match code {
        PARSE_ERROR => "Parse error",
        INVALID_REQUEST => "Invalid Request",
        METHOD_NOT_FOUND => "Method not found",
        INVALID_PARAMS => "Invalid params",
        _ => "Internal error",
    };
    ErrorObject::owned(code, message, None::<()>)
}
