"""The `azureOpenai` provider: Azure OpenAI's deployment URLs with
`api-version`, its v1 API, the `api-key` header from the provider's Secret,
or Entra ID access tokens (a client secret, or a projected service account
token as a federated client assertion), behind every client API;
e2e/mock-llm plays Azure and checks what Azure checks (the key header or a
bearer token its Entra ID double issued, the API version), and plays Entra
ID's token endpoint (the client secret; the assertion's audience, expiry and
signature)."""

import anthropic
import httpx
import pytest

from conftest import AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, FOREIGN_KEY, refused_credential

TEXT = "Hello from the Tenantgate"
HELLO = [{"role": "user", "content": "Say hello"}]


def test_the_double_refuses_what_azure_refuses(upstream):
    url = upstream.url + "/openai/deployments/gpt-4o-prod/chat/completions"
    body = {"messages": HELLO}
    r = httpx.post(url, params={"api-version": "2024-10-21"}, json=body, headers={"Authorization": "Bearer key-one"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "401", "Azure wants api-key, not a bearer"
    r = httpx.post(url, json=body, headers={"api-key": "key-one"})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Resource not found", "no api-version"


def test_chat_on_a_deployment(client, upstream):
    r = client.chat.completions.create(model="azure-chat", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and r.usage.completion_tokens > 0
    last = upstream.last("gpt-4o-prod")
    assert last["credential"] == "key-one", "the key in api-key, from the provider's Secret"


def test_streaming_on_the_v1_api(client, upstream):
    chunks = list(client.chat.completions.create(model="azure-v1-chat", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(TEXT)
    assert chunks[-1].usage.completion_tokens > 0
    assert upstream.last("gpt-4o-v1")["body"]["model"] == "gpt-4o-v1", "the v1 API takes the deployment as the model"


def test_embeddings_on_a_deployment(client):
    r = client.embeddings.create(model="azure-embed", input=["a b c"], encoding_format="float")
    assert len(r.data[0].embedding) == 256 and r.usage.prompt_tokens == 3


@pytest.mark.parametrize("api", ["responses", "messages"])
def test_other_client_apis_on_azure(gateway, client, api):
    if api == "responses":
        assert client.responses.create(model="azure-chat", input="Say hello").output_text.startswith(TEXT)
    else:
        claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)
        m = claude.messages.create(model="azure-chat", max_tokens=32, messages=HELLO)
        assert m.content[0].text.startswith(TEXT)


def test_failover_from_azure_to_openai(client, upstream):
    upstream.script("azure-down", [{"status": 503, "times": 3}])
    before = upstream.count("after-azure")
    r = client.chat.completions.create(model="azure-then-openai", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and upstream.count("after-azure") == before + 1


ENTRA = "/tenantgate-test/oauth2/v2.0/token"
GRANT = {"grant_type": "client_credentials", "client_id": AZURE_CLIENT_ID,
         "scope": "https://cognitiveservices.azure.com/.default"}
ASSERTION = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
EXCHANGE = "api://AzureADTokenExchange"


def test_the_entra_double_refuses_what_entra_refuses(gateway, upstream):
    def token(**form) -> httpx.Response:
        return httpx.post(upstream.url + ENTRA, data={**GRANT, **form})

    r = token(client_secret="not-it")
    assert r.status_code == 401 and r.json()["error_codes"] == [7000215], "a wrong client secret"
    r = token(**ASSERTION, client_assertion=gateway.mint("--audience", "tenantgate"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", "an assertion for another audience"
    r = token(**ASSERTION, client_assertion=gateway.mint("--audience", EXCHANGE, "--ttl-secs", "-60"))
    assert r.status_code == 401 and "expired" in r.json()["error_description"], "an expired assertion"
    r = token(**ASSERTION, client_assertion=gateway.mint("--audience", EXCHANGE, key=FOREIGN_KEY))
    assert r.status_code == 401 and "signature" in r.json()["error_description"], "an untrusted signer"
    r = token(**ASSERTION, client_assertion=gateway.mint("--audience", EXCHANGE))
    assert r.status_code == 200, r.text
    issued = r.json()["access_token"]
    url = upstream.url + "/openai/deployments/entra-direct/chat/completions?api-version=2024-10-21"
    body = {"model": "entra-direct", "messages": HELLO}
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {issued}"}).status_code == 200
    r = httpx.post(url, json=body, headers={"Authorization": "Bearer eyJ.made-up"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "401", "a token Entra ID did not issue"
    assert token(client_secret=AZURE_CLIENT_SECRET).status_code == 200


def test_chat_with_an_entra_id_client_secret(client, upstream):
    before = upstream.count("entra-oauth")
    for _ in range(2):
        r = client.chat.completions.create(model="azure-entra-chat", messages=HELLO)
        assert r.choices[0].message.content.startswith(TEXT) and r.usage.completion_tokens > 0
    assert upstream.count("entra-oauth") - before <= 1, "the token is cached"
    credential = upstream.last("gpt-4o-entra")["credential"]
    assert credential.startswith("Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.entra-mock-"), credential


def test_streaming_with_a_federated_client_assertion(client, upstream):
    chunks = list(client.chat.completions.create(model="azure-federated-chat", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(TEXT)
    assert chunks[-1].usage.completion_tokens > 0
    last = upstream.last("gpt-4o-federated")
    assert last["credential"].startswith("Bearer eyJ"), "an Entra ID token, not an api-key"
    assert last["body"]["model"] == "gpt-4o-federated", "the v1 API takes the deployment as the model"


def test_a_refused_client_secret_is_a_clear_error_without_secrets(tmp_path, upstream):
    r, text = refused_credential(upstream, tmp_path / "gateway.log", "azure-wrong-secret",
                                 "azure-federated-chat", "azure-entra-chat")
    assert "AADSTS7000215" in text and "invalid_client" in text, "the log says why, by Entra ID's code"
    for secret in ("entra-wrong-s3cret", AZURE_CLIENT_SECRET, "entra-mock-", "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIs"):
        assert secret not in text and secret not in r.text, f"{secret} must not be logged or answered"
