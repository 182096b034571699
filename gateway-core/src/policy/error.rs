//! Why a prompt policy refused a request or a response.

use std::sync::Arc;

use http::StatusCode;

use super::decision::Guard;

/// A policy refusal. Messages name the policy and the guard, never a
/// pattern or the text that matched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// An input guard with action `block` fired.
    #[error("the request was blocked by prompt policy `{policy}` (guard: {guard})")]
    Blocked {
        /// Policy id.
        policy: Arc<str>,
        /// Guard that fired.
        guard: Guard,
    },
    /// A guard fired on the model's answer.
    #[error("the response was blocked by prompt policy `{policy}` (guard: {guard})")]
    OutputBlocked {
        /// Policy id.
        policy: Arc<str>,
        /// Guard that fired.
        guard: Guard,
    },
    /// The model is not in the policy's `allowedModels`.
    #[error("the model `{model}` is not allowed by prompt policy `{policy}`")]
    ModelNotAllowed {
        /// Policy id.
        policy: Arc<str>,
        /// Requested model.
        model: String,
    },
    /// The prompt is longer than `maxInputTokens`.
    #[error("the prompt has {tokens} tokens, more than the {limit} allowed by prompt policy `{policy}`")]
    TooManyTokens {
        /// Policy id.
        policy: Arc<str>,
        /// Tokens counted (up to where the limit was passed).
        tokens: u64,
        /// The limit.
        limit: u32,
    },
    /// An input the guards cannot read (token ids) under a policy with input guards.
    #[error("prompt policy `{policy}` guards the input, which it cannot read as token ids: send the input as text")]
    TokenInput {
        /// Policy id.
        policy: Arc<str>,
    },
    /// A system prompt template failed to render (the config check should have caught it).
    #[error("the system prompt of prompt policy `{policy}` failed to render")]
    Render {
        /// Policy id.
        policy: Arc<str>,
    },
}

impl PolicyError {
    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::Render { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// OpenAI error type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ModelNotAllowed { .. } => "permission_error",
            Self::Render { .. } => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// Machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Blocked { .. } | Self::OutputBlocked { .. } => "policy_violation",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::TooManyTokens { .. } => "context_length_exceeded",
            Self::TokenInput { .. } => "policy_unreadable_input",
            Self::Render { .. } => "policy_render_failed",
        }
    }

    /// The request field at fault.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::ModelNotAllowed { .. } => Some("model"),
            Self::Blocked { .. } | Self::TooManyTokens { .. } => Some("messages"),
            Self::TokenInput { .. } => Some("input"),
            _ => None,
        }
    }

    /// Id of the policy that refused.
    pub fn policy(&self) -> &Arc<str> {
        match self {
            Self::Blocked { policy, .. }
            | Self::OutputBlocked { policy, .. }
            | Self::ModelNotAllowed { policy, .. }
            | Self::TooManyTokens { policy, .. }
            | Self::TokenInput { policy }
            | Self::Render { policy } => policy,
        }
    }

    /// The guard that refused, for blocks by a guard.
    pub fn guard(&self) -> Option<Guard> {
        match self {
            Self::Blocked { guard, .. } | Self::OutputBlocked { guard, .. } => Some(*guard),
            _ => None,
        }
    }

    /// Reason for logs, metrics and the audit trail.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Self::Blocked { .. } => "PolicyBlocked",
            Self::OutputBlocked { .. } => "PolicyOutputBlocked",
            Self::ModelNotAllowed { .. } => "PolicyModelNotAllowed",
            Self::TooManyTokens { .. } => "PolicyTooManyTokens",
            Self::TokenInput { .. } => "PolicyUnreadableInput",
            Self::Render { .. } => "PolicyRenderFailed",
        }
    }
}
