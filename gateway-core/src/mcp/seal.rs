//! AES-256-GCM under the tenant's token-encryption key (`gateway-keys`):
//! what the gateway keeps of users' upstream OAuth tokens and PKCE verifiers.
//!
//! Every sealed value is `base64(nonce || ciphertext+tag)` with a fresh random
//! 96-bit nonce, and its associated data names what it belongs to (tenant,
//! connection, subject), so a row copied to another user or connection does
//! not open.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

const NONCE_BYTES: usize = 12;
/// Versioned domain of the associated data.
const AAD_DOMAIN: &str = "tenantgate/mcp-oauth/v1";

/// Why a value could not be sealed or opened. Never carries key or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file is missing or not 32 bytes (base64 as the operator writes it, or raw).
    #[error("token-encryption key {0}")]
    Key(String),
    /// The OS gave no randomness for a nonce.
    #[error("no randomness for a nonce")]
    Random,
    /// Not ours, tampered with, or sealed for another tenant/connection/subject.
    #[error("a stored token does not decrypt under this tenant's key for this connection and user")]
    Open,
}

/// The tenant's token-encryption key.
#[derive(Clone)]
pub struct TokenKey(Aes256Gcm);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// What a sealed value is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Purpose (`token`, `verifier`).
    pub purpose: &'a str,
    /// Tenant name.
    pub tenant: &'a str,
    /// McpConnection name.
    pub connection: &'a str,
    /// The user's subject.
    pub subject: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        // NUL-separated: none of the parts can contain NUL in a way that shifts the others
        // (lengths are prefixed as well, to be unambiguous for any input).
        let mut aad = Vec::with_capacity(64);
        for part in [AAD_DOMAIN, self.purpose, self.tenant, self.connection, self.subject] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

impl TokenKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, SealError> {
        // Base64 as the operator writes it (a trailing newline tolerated), else the raw bytes
        // (untrimmed: a random key may begin or end with whitespace bytes).
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.trim_ascii())
            .ok()
            .filter(|b| b.len() == 32)
            .unwrap_or_else(|| raw.to_vec());
        Aes256Gcm::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| SealError::Key(format!("must be 32 bytes (base64), not {}", bytes.len())))
    }

    /// Reads the key file of the `gateway-keys` Secret.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let raw = std::fs::read(path).map_err(|e| SealError::Key(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&raw).map_err(|e| SealError::Key(format!("{}: {e}", path.display())))
    }

    /// Encrypts `plaintext` bound to `binding`.
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let aad = binding.aad();
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| SealError::Open)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Decrypts what [`TokenKey::seal`] made for the same binding.
    pub fn open(&self, binding: Binding<'_>, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| SealError::Open)?;
        if raw.len() <= NONCE_BYTES {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_BYTES);
        let aad = binding.aad();
        self.0.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(subject: &'a str, connection: &'a str) -> Binding<'a> {
        Binding { purpose: "token", tenant: "acme", connection, subject }
    }

    #[test]
    fn round_trips_only_under_the_same_key_and_binding() {
        let key = TokenKey::from_bytes(&[7u8; 32]).expect("key");
        let sealed = key.seal(binding("alice", "github"), b"gho_secret").expect("seal");
        assert!(!sealed.contains("gho_secret"));
        assert_eq!(key.open(binding("alice", "github"), &sealed).expect("open"), b"gho_secret");
        // Another user, connection or tenant key: does not open.
        assert!(key.open(binding("bob", "github"), &sealed).is_err());
        assert!(key.open(binding("alice", "gitlab"), &sealed).is_err());
        let other = TokenKey::from_bytes(&[8u8; 32]).expect("key");
        assert!(other.open(binding("alice", "github"), &sealed).is_err());
        // Fresh nonces: the same plaintext never seals the same way twice.
        assert_ne!(sealed, key.seal(binding("alice", "github"), b"gho_secret").expect("seal"));
    }

    #[test]
    fn keys_must_be_32_bytes() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(TokenKey::from_bytes(b64.as_bytes()).is_ok());
        assert!(TokenKey::from_bytes(format!("{b64}\n").as_bytes()).is_ok());
        // Raw bytes are taken as they are, whitespace bytes included.
        assert!(TokenKey::from_bytes(&[b'\t'; 32]).is_ok());
        let err = TokenKey::from_bytes(b"short").expect_err("short key");
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }
}
