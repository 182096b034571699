"""The `azureOpenai` provider: Azure OpenAI's deployment URLs with
`api-version`, its v1 API, the `api-key` header from the provider's Secret,
behind every client API; e2e/mock-llm plays Azure and checks what Azure
checks (the key header, the API version)."""

import anthropic
import httpx
import pytest

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
