//! Google OAuth access tokens from a service account key (the JSON file
//! Google issues), for Vertex AI: a JWT signed with the key (RS256) is
//! exchanged at the key's `token_uri` (the RFC 7523 jwt-bearer grant). The key
//! file is read again for each exchange, so a rotated key is used without a
//! restart; [`super::access_token::AccessTokens`] caches the tokens.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::UpstreamError;
use super::access_token::{self, OAuthToken, Token};

/// What Vertex AI needs.
pub(super) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The assertion's lifetime (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;

/// The fields of a service account key file the exchange uses.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// A service account key file.
#[derive(Debug)]
pub struct ServiceAccountKey {
    key_file: PathBuf,
}

impl ServiceAccountKey {
    /// The key in `key_file`.
    pub fn new(key_file: impl Into<PathBuf>) -> Self {
        Self { key_file: key_file.into() }
    }

    pub(super) async fn exchange(&self, client: &reqwest::Client) -> Result<Token, UpstreamError> {
        let path = self.key_file.display().to_string();
        // Never the key or the token: the file's path and what failed.
        let credentials = |why: &str| access_token::refused("service account key", &path, why);
        let text = access_token::read_credential(&self.key_file, "service account key").await?;
        let account: ServiceAccount =
            serde_json::from_str(&text).map_err(|_| credentials("the key file is not a service account key"))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|_| credentials("the key file's private_key is not an RSA key"))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = Claims {
            iss: &account.client_email,
            sub: &account.client_email,
            scope: SCOPE,
            aud: &account.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = account.private_key_id.clone();
        let assertion =
            jsonwebtoken::encode(&header, &claims, &key).map_err(|_| credentials("signing the assertion failed"))?;
        let request =
            access_token::post_form(client, &account.token_uri, [("grant_type", GRANT), ("assertion", &assertion)]);
        let body = access_token::send(request, &account.token_uri).await?;
        Ok(access_token::parse::<OAuthToken>(&body, &account.token_uri)?.into())
    }
}
