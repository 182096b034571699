//! Google workload identity federation for Vertex AI, as Google's
//! external-account credentials do it: the pod's projected service account
//! token is exchanged at the Security Token Service (RFC 8693) for a federated
//! access token; with a service account to impersonate, that token then buys
//! the service account's own token from the IAM Credentials API
//! (`generateAccessToken`). The projected token is read again at each
//! exchange (the kubelet rotates it); [`super::access_token::AccessTokens`]
//! caches the result.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tenantgate_crds::config::GoogleWorkloadIdentityConfig;

use super::UpstreamError;
use super::access_token::{self, OAuthToken, Token};
use super::google_auth::SCOPE;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// `generateAccessToken`'s answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceAccountToken {
    access_token: String,
    expire_time: String,
}

/// A workload identity pool provider and, optionally, a service account to impersonate.
#[derive(Debug)]
pub struct WorkloadIdentity {
    audience: String,
    subject_token_file: PathBuf,
    service_account_email: Option<String>,
    sts_url: String,
    iam_credentials_url: String,
}

impl WorkloadIdentity {
    /// The federation the config describes.
    pub fn new(config: &GoogleWorkloadIdentityConfig) -> Self {
        Self {
            audience: config.audience.clone(),
            subject_token_file: PathBuf::from(&config.subject_token_file),
            service_account_email: config.service_account_email.clone(),
            sts_url: config.sts_url.clone(),
            iam_credentials_url: config.iam_credentials_url.clone(),
        }
    }

    pub(super) async fn exchange(&self, client: &reqwest::Client) -> Result<Token, UpstreamError> {
        let subject =
            access_token::read_credential(&self.subject_token_file, "projected service account token").await?;
        let request = access_token::post_form(
            client,
            &self.sts_url,
            [
                ("grant_type", TOKEN_EXCHANGE),
                ("audience", &self.audience),
                ("scope", SCOPE),
                ("requested_token_type", ACCESS_TOKEN_TYPE),
                ("subject_token", &subject),
                ("subject_token_type", JWT_TYPE),
            ],
        );
        let body = access_token::send(request, &self.sts_url).await?;
        let federated: Token = access_token::parse::<OAuthToken>(&body, &self.sts_url)?.into();
        match &self.service_account_email {
            None => Ok(federated),
            Some(email) => self.impersonate(client, email, &federated.access_token).await,
        }
    }

    /// The service account's own token, bought with the federated one.
    async fn impersonate(
        &self,
        client: &reqwest::Client,
        email: &str,
        federated: &str,
    ) -> Result<Token, UpstreamError> {
        let endpoint = self.generate_access_token_url(email)?;
        let request = client
            .post(endpoint.clone())
            .header(
                http::header::AUTHORIZATION,
                access_token::bearer(federated, "the federated token is not a header")?,
            )
            .json(&serde_json::json!({ "scope": [SCOPE] }));
        let body = access_token::send(request, endpoint.as_str()).await?;
        let answer: ServiceAccountToken = access_token::parse(&body, endpoint.as_str())?;
        let expires = chrono::DateTime::parse_from_rfc3339(&answer.expire_time)
            .map_err(|_| access_token::refused("token answer", endpoint.as_str(), "expireTime is not a timestamp"))?;
        let lifetime = (expires.to_utc() - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Ok(Token { access_token: answer.access_token, lifetime })
    }

    /// `{iamCredentialsUrl}/v1/projects/-/serviceAccounts/{email}:generateAccessToken`,
    /// the email one escaped path segment.
    fn generate_access_token_url(&self, email: &str) -> Result<reqwest::Url, UpstreamError> {
        let place = &self.iam_credentials_url;
        let mut url = reqwest::Url::parse(place)
            .map_err(|_| access_token::refused("IAM Credentials URL", place, "it is not a URL"))?;
        url.path_segments_mut()
            .map_err(|()| access_token::refused("IAM Credentials URL", place, "it cannot take a path"))?
            .pop_if_empty()
            .extend(["v1", "projects", "-", "serviceAccounts", &format!("{email}:generateAccessToken")]);
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_impersonation_url_escapes_the_email() {
        let w = WorkloadIdentity {
            audience: String::new(),
            subject_token_file: PathBuf::new(),
            service_account_email: None,
            sts_url: String::new(),
            iam_credentials_url: "https://iamcredentials.googleapis.com/".into(),
        };
        assert_eq!(
            w.generate_access_token_url("llm@p.iam.gserviceaccount.com").expect("url").as_str(),
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/llm@p.iam.gserviceaccount.com:generateAccessToken"
        );
        let odd = w.generate_access_token_url("a/../b?c").expect("url");
        assert!(odd.path().ends_with("/serviceAccounts/a%2F..%2Fb%3Fc:generateAccessToken"), "{odd}");
    }
}
