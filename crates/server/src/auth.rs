//! API tokens and the authenticated caller.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// A new random token: 256 bits, shown once, stored only as its hash.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("crm_{}", hex::encode(bytes))
}

/// SHA-256 of the token. Tokens carry 256 random bits, so a fast hash is
/// enough: there is nothing to brute-force that a slow hash would protect.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The user making a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub is_admin: bool,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("only an admin may do this"))
        }
    }
}

impl Caller {
    /// The caller a token's user makes: refused while the user is disabled.
    pub fn of_user(user: &crmsync_core::Record) -> Result<Caller, ApiError> {
        if user.state != "active" {
            return Err(ApiError::forbidden(
                "this user is disabled; ask an admin to enable it",
            ));
        }
        let is_admin = user.fields.get("role").and_then(|r| r.as_str()) == Some("admin");
        Ok(Caller {
            user_id: user.id,
            is_admin,
        })
    }
}

/// The refusal for a token no user holds (never issued, revoked, or its
/// user deleted).
pub fn unknown_token() -> ApiError {
    ApiError::unauthorized("unknown or revoked token; ask an admin for a new one")
}

/// The bearer token of a request, not yet checked against the database:
/// for handlers that check it in the same statement as their own read.
pub struct BearerToken(pub String);

impl BearerToken {
    /// The stored form of the token (its hash).
    pub fn hash(&self) -> String {
        hash_token(&self.0)
    }

    /// Looks the token up on its own: who is calling.
    pub async fn caller(&self, state: &AppState) -> Result<Caller, ApiError> {
        let user = state
            .store
            .user_by_token(&self.hash())
            .await?
            .ok_or_else(unknown_token)?;
        Caller::of_user(&user)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized("missing 'Authorization: Bearer <token>' header")
            })?;
        header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| BearerToken(t.to_string()))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
            })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        BearerToken::from_request_parts(parts, state)
            .await?
            .caller(state)
            .await
    }
}
