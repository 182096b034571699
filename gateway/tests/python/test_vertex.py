"""The `vertex` provider: Gemini on Vertex AI, authenticated with a service
account key: the gateway signs a JWT with it, exchanges it at the key's
token_uri for an access token, caches the token and sends it as a bearer.
e2e/mock-llm plays both Google's token endpoint (it verifies the assertion's
RS256 signature against the key's public JWKS, its audience, expiry and
scope) and Vertex AI (it accepts only tokens it issued)."""


import httpx

from conftest import FOREIGN_KEY, debug_log_of_one_chat

TEXT = "Hello from the Tenantgate"
HELLO = [{"role": "user", "content": "Say hello"}]
VERTEX = "/v1/projects/tenantgate-test/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


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
    r = client.chat.completions.create(model="vertex-gemini", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="vertex-gemini", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith(TEXT)
    assert chunks[-1].usage.completion_tokens > 0
    client.responses.create(model="vertex-gemini", input="Say hello")
    issued = upstream.count("google-oauth") - before
    assert issued <= 1, f"one token serves many requests, {issued} were issued"
    assert upstream.count("google-oauth") >= 1
    assert upstream.last("gemini-2.5-pro")["credential"].startswith("Bearer ya29.mock-")


def test_no_secret_in_the_gateway_log(tmp_path, upstream):
    text = debug_log_of_one_chat(tmp_path, upstream, "vertex-gemini")
    assert "ya29.mock-" not in text and "PRIVATE KEY" not in text, "neither the token nor the key is logged"
