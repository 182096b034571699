//! Azure OpenAI: the OpenAI wire format at Azure's URLs. Each target's model
//! names a deployment; the key goes in the `api-key` header, or an Entra ID
//! access token in `Authorization` (see [`super::entra`]). With an API
//! version, calls go to `{base}/openai/deployments/{deployment}/{operation}?api-version=V`;
//! without one, to the v1 API, `{base}/openai/v1/{operation}`, with the
//! deployment as the model.

use super::embeddings::{EmbeddingsReply, EmbeddingsRequest};
use super::endpoint::Wire;
use super::{Call, Endpoint, Reply, UpstreamError, openai};

/// An Azure OpenAI resource.
#[derive(Debug)]
pub struct AzureOpenAi {
    endpoint: Endpoint,
    api_version: Option<String>,
}

impl AzureOpenAi {
    /// Azure's key header; the path is made per call.
    pub const WIRE: Wire = Wire { path: "/openai", key_header: "api-key", key_prefix: "", fixed: &[] };

    /// A resource at `endpoint` (its base URL with [`Self::WIRE`]), calling the
    /// deployment API at `api_version`, or the v1 API without one.
    pub fn new(endpoint: Endpoint, api_version: Option<String>) -> Self {
        Self { endpoint, api_version }
    }

    /// The URL of `operation` (`chat/completions`, `embeddings`) for `deployment`.
    fn url(&self, deployment: &str, operation: &str) -> Result<reqwest::Url, UpstreamError> {
        let mut url = self.endpoint.url().clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| UpstreamError::Protocol("the Azure base URL cannot take a path".into()))?;
            path.pop_if_empty();
            match &self.api_version {
                Some(_) => path.extend(["deployments", deployment]),
                None => path.push("v1"),
            };
            path.extend(operation.split('/'));
        }
        if let Some(version) = &self.api_version {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(url)
    }

    /// Sends one chat request.
    pub async fn call(&self, call: Call<'_>) -> Result<Reply, UpstreamError> {
        openai::chat(&self.endpoint, Some(self.url(call.model, "chat/completions")?), call).await
    }

    /// Sends one embeddings request.
    pub async fn embed(&self, call: Call<'_, EmbeddingsRequest>) -> Result<EmbeddingsReply, UpstreamError> {
        openai::embed(&self.endpoint, Some(self.url(call.model, "embeddings")?), call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure(base: &str, version: Option<&str>) -> AzureOpenAi {
        let settings = crate::egress::ClientSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            follow_redirects: false,
            max_idle_per_host: 0,
        };
        let client = crate::egress::HttpClient::new(&Default::default(), settings);
        let endpoint = Endpoint::new(&AzureOpenAi::WIRE, base, None, &Default::default(), client).expect("endpoint");
        AzureOpenAi::new(endpoint, version.map(str::to_owned))
    }

    #[test]
    fn deployment_and_v1_urls() {
        let a = azure("https://res.openai.azure.com", Some("2024-10-21"));
        assert_eq!(
            a.url("gpt-4o prod", "chat/completions").expect("url").as_str(),
            "https://res.openai.azure.com/openai/deployments/gpt-4o%20prod/chat/completions?api-version=2024-10-21",
            "the deployment is one escaped path segment"
        );
        let v1 = azure("https://res.openai.azure.com/", None);
        assert_eq!(
            v1.url("d", "embeddings").expect("url").as_str(),
            "https://res.openai.azure.com/openai/v1/embeddings"
        );
        assert!(a.url("../../admin", "chat/completions").expect("url").path().contains("..%2F..%2Fadmin"));
    }
}
