//! AWS credentials for Amazon Bedrock, and the SigV4 signature of each
//! request (service `bedrock`), made by AWS's own `aws-sigv4`.
//!
//! The credentials are an access key in Secret files, re-read at most once a
//! second like API keys so a rotated key is used without a restart, or the
//! pod's web identity: its projected service account token is exchanged at
//! STS (`AssumeRoleWithWebIdentity`) for temporary credentials, cached until
//! five minutes before they expire. One exchange runs at a time, and the token
//! file is read again for each (the kubelet rotates it).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tenantgate_crds::config::AwsCredentialsConfig;
use tokio::time::Instant;

use super::access_token::{Cached, post_form, read_credential, refused};
use super::{SecretFile, UpstreamError};

/// The signing name of the Bedrock runtime.
const SERVICE: &str = "bedrock";
/// The lifetime asked of STS.
const SESSION_SECONDS: u32 = 3600;

/// How one provider's requests are signed.
#[derive(Debug)]
pub struct AwsAuth {
    region: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    AccessKey { id: SecretFile, secret: SecretFile, token: Option<SecretFile> },
    WebIdentity(WebIdentity),
}

impl AwsAuth {
    /// The signing the config describes, with STS reached through `client` (the egress client).
    pub fn from_config(region: &str, credentials: &AwsCredentialsConfig, client: &reqwest::Client) -> Self {
        match credentials {
            AwsCredentialsConfig::AccessKey { access_key_id_file, secret_access_key_file, session_token_file } => {
                Self::access_key(
                    region,
                    access_key_id_file,
                    secret_access_key_file,
                    session_token_file.as_ref().map(PathBuf::from),
                )
            }
            AwsCredentialsConfig::WebIdentity { role_arn, sts_url, token_file } => {
                Self::web_identity(region, role_arn, sts_url, token_file, client.clone())
            }
        }
    }

    /// An access key in Secret files (and a session token, for temporary credentials).
    pub fn access_key(
        region: impl Into<String>,
        id_file: impl Into<PathBuf>,
        secret_file: impl Into<PathBuf>,
        token_file: Option<PathBuf>,
    ) -> Self {
        let source = Source::AccessKey {
            id: SecretFile::new(id_file, ""),
            secret: SecretFile::new(secret_file, ""),
            token: token_file.map(|f| SecretFile::new(f, "")),
        };
        Self { region: region.into(), source }
    }

    /// The role `role_arn`, assumed at `sts_url` with the token in `token_file`,
    /// through `client` (the egress client).
    pub fn web_identity(
        region: impl Into<String>,
        role_arn: impl Into<String>,
        sts_url: impl Into<String>,
        token_file: impl Into<PathBuf>,
        client: reqwest::Client,
    ) -> Self {
        let source = Source::WebIdentity(WebIdentity {
            role_arn: role_arn.into(),
            sts_url: sts_url.into(),
            token_file: token_file.into(),
            session_name: session_name(hostname::get().ok().and_then(|h| h.into_string().ok()).as_deref()),
            client,
            cached: Cached::new(),
        });
        Self { region: region.into(), source }
    }

    async fn credentials(&self, deadline: Instant) -> Result<Credentials, UpstreamError> {
        match &self.source {
            Source::AccessKey { id, secret, token } => {
                let text = |f: &SecretFile| f.header().map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
                let token = token.as_ref().map(text).transpose()?;
                Ok(Credentials::new(text(id)?, text(secret)?, token, None, "tenantgate-secret"))
            }
            Source::WebIdentity(w) => w.credentials(deadline).await,
        }
    }

    /// The headers that sign a POST of `body` to `url` with `headers`:
    /// `authorization`, `x-amz-date` and, with temporary credentials,
    /// `x-amz-security-token`.
    pub async fn sign(
        &self,
        url: &reqwest::Url,
        headers: &HeaderMap,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, UpstreamError> {
        let identity: Identity = self.credentials(deadline).await?.into();
        let failed = |e: &dyn std::fmt::Display| UpstreamError::Protocol(format!("cannot sign the request: {e}"));
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let signed = headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let request =
            SignableRequest::new("POST", url.as_str(), signed, SignableBody::Bytes(body)).map_err(|e| failed(&e))?;
        let (instructions, _signature) = sign(request, &params).map_err(|e| failed(&e))?.into_parts();
        let (out, _params) = instructions.into_parts();
        out.into_iter()
            .map(|h| {
                let mut value = HeaderValue::from_str(h.value()).map_err(|_| UpstreamError::Credentials)?;
                value.set_sensitive(h.sensitive() || h.name() == "authorization");
                Ok((HeaderName::from_static(h.name()), value))
            })
            .collect()
    }
}

/// A role session name STS accepts (`[\w+=,.@-]{2,64}`), naming the pod.
fn session_name(host: Option<&str>) -> String {
    let mut name: String = format!("tenantgate-{}", host.unwrap_or("gateway"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' })
        .collect();
    name.truncate(64);
    name
}

/// Temporary credentials of a role assumed with the pod's web identity.
#[derive(Debug)]
struct WebIdentity {
    role_arn: String,
    sts_url: String,
    token_file: PathBuf,
    session_name: String,
    client: reqwest::Client,
    /// The temporary credentials, until five minutes before they expire.
    cached: Cached<Credentials>,
}

/// STS's answer to `AssumeRoleWithWebIdentity` (XML; the root element's name is not checked).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleAnswer {
    assume_role_with_web_identity_result: AssumeRoleResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeRoleResult {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// STS's error answer: `<ErrorResponse><Error><Code>...`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsErrorAnswer {
    error: StsError,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsError {
    code: String,
}

impl WebIdentity {
    async fn credentials(&self, deadline: Instant) -> Result<Credentials, UpstreamError> {
        self.cached.get_or_fetch(deadline, self.exchange()).await
    }

    async fn exchange(&self) -> Result<(Credentials, Duration), UpstreamError> {
        // Never the token or the keys: the role and what failed.
        let credentials = |why: &str| refused("AWS role", &self.role_arn, why);
        let token = read_credential(&self.token_file, "projected service account token").await?;
        let seconds = SESSION_SECONDS.to_string();
        let pairs = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", &self.role_arn),
            ("RoleSessionName", &self.session_name),
            ("DurationSeconds", &seconds),
            ("WebIdentityToken", &token),
        ];
        let response =
            post_form(&self.client, &self.sts_url, pairs).send().await.map_err(|e| UpstreamError::from_send(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|_| credentials("the STS answer was cut"))?;
        if !status.is_success() {
            // STS's error code (InvalidIdentityToken, AccessDenied, ...) names no secret.
            let code = quick_xml::de::from_str::<StsErrorAnswer>(&body).map(|e| e.error.code).unwrap_or_default();
            tracing::warn!(status = status.as_u16(), code, role = %self.role_arn, "STS refused the web identity");
            return Err(UpstreamError::Credentials);
        }
        let answer: AssumeRoleAnswer = quick_xml::de::from_str(&body)
            .map_err(|_| credentials("the STS answer is not an AssumeRoleWithWebIdentity result"))?;
        let c = answer.assume_role_with_web_identity_result.credentials;
        let expires = chrono::DateTime::parse_from_rfc3339(&c.expiration)
            .map_err(|_| credentials("the STS answer's Expiration is not a time"))?;
        let expires = SystemTime::from(expires);
        let lifetime = expires.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        let credentials = Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expires),
            "tenantgate-web-identity",
        );
        Ok((credentials, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_what_sts_accepts() {
        assert_eq!(session_name(Some("gw-7d9f:x")), "tenantgate-gw-7d9f-x");
        assert_eq!(session_name(None), "tenantgate-gateway");
        assert_eq!(session_name(Some(&"a".repeat(100))).len(), 64);
    }

    #[test]
    fn sts_answers_parse() {
        let xml = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:tg-acme:gateway</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>FQoGZXIvYXdzE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI</SecretAccessKey>
      <Expiration>2026-12-05T15:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/example</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;
        let answer: AssumeRoleAnswer = quick_xml::de::from_str(xml).expect("answer");
        let c = answer.assume_role_with_web_identity_result.credentials;
        assert_eq!((c.access_key_id.as_str(), c.session_token.as_str()), ("ASIAEXAMPLE", "FQoGZXIvYXdzE"));
        assert_eq!(c.expiration, "2026-12-05T15:00:00Z");
        let error = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error><RequestId>1</RequestId></ErrorResponse>"#;
        let e: StsErrorAnswer = quick_xml::de::from_str(error).expect("error");
        assert_eq!(e.error.code, "InvalidIdentityToken");
    }

    #[tokio::test]
    async fn a_signature_covers_the_body_and_names_the_scope() {
        let dir = std::env::temp_dir().join(format!("tg-aws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("id"), "AKIDEXAMPLE\n").expect("id");
        std::fs::write(dir.join("secret"), "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").expect("secret");
        std::fs::write(dir.join("token"), "session-token").expect("token");
        let auth = AwsAuth::access_key("eu-west-3", dir.join("id"), dir.join("secret"), Some(dir.join("token")));
        let url =
            reqwest::Url::parse("https://bedrock-runtime.eu-west-3.amazonaws.com/model/m%3A0/converse").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let one = auth.sign(&url, &headers, b"{}", deadline).await.expect("signed");
        let two = auth.sign(&url, &headers, b"{ }", deadline).await.expect("signed");
        let get = |h: &[(HeaderName, HeaderValue)], n: &str| {
            h.iter().find(|(k, _)| k == n).map(|(_, v)| v.to_str().expect("ascii").to_owned())
        };
        let authorization = get(&one, "authorization").expect("authorization");
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && authorization.contains("/eu-west-3/bedrock/aws4_request")
                && authorization.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{authorization}"
        );
        assert_eq!(get(&one, "x-amz-security-token").as_deref(), Some("session-token"));
        assert!(one.iter().all(|(_, v)| v.is_sensitive() || !v.to_str().unwrap_or_default().contains("session")));
        let sig = |a: &str| a.rsplit_once("Signature=").map(|(_, s)| s.to_owned());
        assert_ne!(sig(&authorization), sig(&get(&two, "authorization").expect("authorization")), "the body is signed");
        std::fs::remove_dir_all(&dir).ok();
    }
}
