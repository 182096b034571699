//! Microsoft Entra ID access tokens for Azure OpenAI: the client credentials
//! grant at `{authority}/{tenant}/oauth2/v2.0/token` for the Cognitive Services
//! scope, the client authenticated by its secret or, with workload identity
//! federation, by the pod's projected service account token as a JWT client
//! assertion. The secret or token file is read again at each exchange;
//! [`super::access_token::AccessTokens`] caches the result.

use std::path::PathBuf;

use tenantgate_crds::config::{EntraCredential, EntraIdConfig};

use super::UpstreamError;
use super::access_token::{self, OAuthToken, Token};

/// What Azure OpenAI needs.
const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client proves itself.
#[derive(Debug)]
enum ClientAuth {
    Secret(PathBuf),
    Assertion(PathBuf),
}

/// An Entra ID application.
#[derive(Debug)]
pub struct EntraId {
    token_url: String,
    client_id: String,
    auth: ClientAuth,
}

impl EntraId {
    /// The application the config describes.
    pub fn new(config: &EntraIdConfig) -> Self {
        let auth = match &config.credential {
            EntraCredential::ClientSecretFile(path) => ClientAuth::Secret(path.into()),
            EntraCredential::ClientAssertionFile(path) => ClientAuth::Assertion(path.into()),
        };
        Self { token_url: config.token_url.clone(), client_id: config.client_id.clone(), auth }
    }

    pub(super) async fn exchange(&self, client: &reqwest::Client) -> Result<Token, UpstreamError> {
        let (name, value, extra) = match &self.auth {
            ClientAuth::Secret(path) => {
                ("client_secret", access_token::read_credential(path, "Entra ID client secret").await?, None)
            }
            ClientAuth::Assertion(path) => (
                "client_assertion",
                access_token::read_credential(path, "projected service account token").await?,
                Some(("client_assertion_type", JWT_BEARER_ASSERTION)),
            ),
        };
        let pairs = [("grant_type", "client_credentials"), ("client_id", self.client_id.as_str()), ("scope", SCOPE)]
            .into_iter()
            .chain(extra)
            .chain([(name, value.as_str())]);
        let request = access_token::post_form(client, &self.token_url, pairs);
        let body = access_token::send(request, &self.token_url).await?;
        Ok(access_token::parse::<OAuthToken>(&body, &self.token_url)?.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::llm::access_token::{AccessTokens, Grant};

    /// A token endpoint that records each form and issues `token-<n>`, or refuses the secret `bad`.
    async fn token_endpoint() -> (String, Arc<Mutex<Vec<Vec<(String, String)>>>>) {
        let forms = Arc::new(Mutex::new(Vec::new()));
        let seen = forms.clone();
        let app = axum::Router::new().route(
            "/t/oauth2/v2.0/token",
            axum::routing::post(move |body: String| {
                let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                let refused = form.iter().any(|(k, v)| k == "client_secret" && v == "bad");
                let n = {
                    let mut forms = seen.lock().expect("lock");
                    forms.push(form);
                    forms.len()
                };
                async move {
                    if refused {
                        let body = r#"{"error":"invalid_client","error_codes":[7000215]}"#;
                        return (http::StatusCode::UNAUTHORIZED, body.to_owned());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    (http::StatusCode::OK, format!(r#"{{"access_token":"token-{n}","expires_in":3599}}"#))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/t/oauth2/v2.0/token"), forms)
    }

    fn grant(token_url: &str, credential: EntraCredential) -> AccessTokens {
        let config = EntraIdConfig { token_url: token_url.into(), client_id: "app".into(), credential };
        AccessTokens::new(Grant::EntraId(EntraId::new(&config)), reqwest::Client::new())
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn one_exchange_serves_concurrent_calls_and_the_file_is_read_again_for_the_next() {
        let (url, forms) = token_endpoint().await;
        let dir = std::env::temp_dir().join(format!("tg-entra-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\n").expect("secret");
        let tokens = grant(&url, EntraCredential::ClientSecretFile(secret.display().to_string()));
        let (a, b, c) = tokio::join!(tokens.header(deadline()), tokens.header(deadline()), tokens.header(deadline()));
        for value in [a, b, c] {
            let value = value.expect("token");
            assert_eq!(value.to_str().ok(), Some("Bearer token-1"));
            assert!(value.is_sensitive());
        }
        let form = forms.lock().expect("lock")[0].clone();
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("scope", "https://cognitiveservices.azure.com/.default"),
                ("client_secret", "s3cret"),
            ]
        );
        std::fs::write(&secret, "rotated").expect("rotate");
        tokens.forget().await;
        assert_eq!(tokens.header(deadline()).await.expect("token").to_str().ok(), Some("Bearer token-2"));
        assert!(forms.lock().expect("lock")[1].contains(&("client_secret".into(), "rotated".into())));

        let assertion = dir.join("token");
        std::fs::write(&assertion, "eyJ.projected.jwt").expect("token");
        let federated = grant(&url, EntraCredential::ClientAssertionFile(assertion.display().to_string()));
        federated.header(deadline()).await.expect("token");
        let form = forms.lock().expect("lock")[2].clone();
        assert!(form.contains(&(
            "client_assertion_type".into(),
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()
        )));
        assert!(form.contains(&("client_assertion".into(), "eyJ.projected.jwt".into())));
        assert!(!form.iter().any(|(k, _)| k == "client_secret"));

        std::fs::write(&secret, "bad").expect("bad secret");
        let refused = grant(&url, EntraCredential::ClientSecretFile(secret.display().to_string()));
        let err = refused.header(deadline()).await.expect_err("refused");
        assert!(matches!(err, UpstreamError::Credentials) && !err.to_string().contains("bad"), "{err}");
        let missing = grant(&url, EntraCredential::ClientSecretFile(dir.join("nope").display().to_string()));
        assert!(matches!(missing.header(deadline()).await, Err(UpstreamError::Credentials)));
        std::fs::remove_dir_all(&dir).ok();
    }
}
