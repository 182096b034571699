"""The `vertex` provider: Gemini on Vertex AI, authenticated with a service
account key (the gateway signs a JWT with it, exchanges it at the key's
token_uri for an access token, caches the token and sends it as a bearer) or
with workload identity federation (the projected service account token is
exchanged at STS, and the federated token impersonates a service account).
e2e/mock-llm plays Google's token endpoint (it verifies the assertion's RS256
signature against the key's public JWKS, its audience, expiry and scope),
STS (grant and token types, the pool provider, the subject token's audience,
expiry and signature), the IAM Credentials API (a federated token it issued)
and Vertex AI (it accepts only tokens it issued)."""


import httpx

from conftest import FOREIGN_KEY, OTHER_POOL, WORKLOAD_POOL, debug_log_of_one_chat, refused_credential

TEXT = "Hello from the Tenantgate"
HELLO = [{"role": "user", "content": "Say hello"}]
VERTEX = "/v1/projects/tenantgate-test/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def chat_and_stream(client, model: str) -> None:
    """A chat completion of `model`, whole and streamed, each with its text and usage."""
    r = client.chat.completions.create(model=model, messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(TEXT)
    assert chunks[-1].usage.completion_tokens > 0


def test_the_double_refuses_what_google_refuses(gateway, upstream):
    r = httpx.post(upstream.url + VERTEX, json=BODY, headers={"Authorization": "Bearer ya29.made-up"})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED", "a token it did not issue"
    grant = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
    r = httpx.post(upstream.url + "/token", data={**grant, "assertion": gateway.mint(key=FOREIGN_KEY)})
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", "an assertion no trusted key signed"
    r = httpx.post(upstream.url + "/token", data={**grant, "assertion": gateway.mint()})
    assert r.status_code == 400, "a trusted key, but not for this endpoint (audience) and scope"


def test_chat_and_streaming_with_a_cached_token(client, upstream):
    before = upstream.count("google-oauth")
    chat_and_stream(client, "vertex-gemini")
    client.responses.create(model="vertex-gemini", input="Say hello")
    issued = upstream.count("google-oauth") - before
    assert issued <= 1, f"one token serves many requests, {issued} were issued"
    assert upstream.count("google-oauth") >= 1
    assert upstream.last("gemini-2.5-pro")["credential"].startswith("Bearer ya29.mock-")


def test_no_secret_in_the_gateway_log(tmp_path, upstream):
    text = debug_log_of_one_chat(tmp_path, upstream, "vertex-gemini")
    assert "ya29.mock-" not in text and "PRIVATE KEY" not in text, "neither the token nor the key is logged"


STS = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "scope": "https://www.googleapis.com/auth/cloud-platform",
    "audience": WORKLOAD_POOL,
}
IMPERSONATE = "/v1/projects/-/serviceAccounts/vertex@tenantgate-test.iam.gserviceaccount.com:generateAccessToken"


def test_the_sts_double_refuses_what_google_refuses(gateway, upstream):
    def sts(subject: str, **form) -> httpx.Response:
        return httpx.post(upstream.url + "/v1/token", data={**STS, "subject_token": subject, **form})

    good = gateway.mint("--audience", "https:" + WORKLOAD_POOL)
    assert sts(good, grant_type="client_credentials").json()["error"] == "unsupported_grant_type"
    assert sts(good, subject_token_type="urn:ietf:params:oauth:token-type:saml2").status_code == 400
    assert sts(good, audience=OTHER_POOL).json()["error"] == "invalid_target", "another pool provider"
    assert sts(gateway.mint("--audience", "tenantgate")).json()["error"] == "invalid_grant", "another audience"
    expired = gateway.mint("--audience", "https:" + WORKLOAD_POOL, "--ttl-secs", "-60")
    assert sts(expired).json()["error"] == "invalid_grant", "an expired subject token"
    foreign = gateway.mint("--audience", "https:" + WORKLOAD_POOL, key=FOREIGN_KEY)
    assert sts(foreign).json()["error"] == "invalid_grant", "an untrusted signer"
    r = sts(good)
    assert r.status_code == 200 and r.json()["issued_token_type"].endswith(":access_token"), r.text
    federated = r.json()["access_token"]
    scope = {"scope": ["https://www.googleapis.com/auth/cloud-platform"]}
    r = httpx.post(upstream.url + IMPERSONATE, json=scope, headers={"Authorization": "Bearer ya29.made-up"})
    assert r.status_code == 401, "impersonation needs a federated token STS issued"
    r = httpx.post(upstream.url + IMPERSONATE, json=scope, headers={"Authorization": f"Bearer {federated}"})
    assert r.status_code == 200 and r.json()["expireTime"].endswith("Z"), r.text
    for token in (federated, r.json()["accessToken"]):
        assert httpx.post(upstream.url + VERTEX, json=BODY, headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_chat_and_streaming_with_workload_identity(client, upstream):
    before = (upstream.count("google-sts"), upstream.count("google-impersonation"))
    chat_and_stream(client, "vertex-federated")
    after = (upstream.count("google-sts"), upstream.count("google-impersonation"))
    assert after[0] - before[0] <= 1 and after[1] - before[1] <= 1, "one exchange serves many requests"
    credential = upstream.last("gemini-2.5-flash-wif")["credential"]
    assert credential.startswith("Bearer ya29.impersonated-mock-"), "the service account's token"
    r = client.chat.completions.create(model="vertex-federated-direct", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT)
    credential = upstream.last("gemini-2.5-flash-direct")["credential"]
    assert credential.startswith("Bearer ya29.federated-mock-"), "without serviceAccountEmail, the federated token"


def test_a_refused_exchange_is_a_clear_error_without_tokens(tmp_path, upstream):
    r, text = refused_credential(upstream, tmp_path / "gateway.log", "vertex-other-pool", "vertex-federated")
    assert "invalid_target" in text, "the log says why, by STS's error code"
    for secret in ("ya29.", "eyJhbGciOiJSUzI1NiIs", "eyJ0eXAiOiJKV1Qi"):
        assert secret not in text and secret not in r.text, f"{secret} must not be logged or answered"
