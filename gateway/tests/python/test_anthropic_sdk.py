"""`/v1/messages` as Anthropic's clients call it: the official anthropic SDK
(x-api-key or a bearer token), against models on an OpenAI-compatible
upstream, an Anthropic upstream and the in-process mock, with failover from
one provider type to the other."""

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, audit_events

TEXT = "Hello from the Tenantgate"
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# chat: an OpenAI-compatible upstream, translated both ways; claude: an Anthropic upstream; in-process: the mock.
MODELS = ["chat", "claude", "in-process"]
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_message(claude, model):
    m = claude.messages.create(model=model, max_tokens=64, system="Be brief.", messages=HELLO)
    assert m.type == "message" and m.role == "assistant" and m.model == model
    assert m.content[0].type == "text" and m.content[0].text.startswith(TEXT)
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_streaming(claude, model):
    with claude.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith(TEXT) and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0, "the usage chunk reaches message_delta"


@pytest.mark.parametrize("model", MODELS)
def test_tool_use_round_trip(claude, model):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    m = claude.messages.create(model=model, max_tokens=64, tools=[WEATHER], messages=ask)
    assert m.stop_reason == "tool_use"
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "mock"}
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}
    m2 = claude.messages.create(model=model, max_tokens=64, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [result]},
    ])
    assert m2.stop_reason == "end_turn" and "sunny, 21C" in m2.content[0].text


@pytest.mark.parametrize("model", MODELS)
def test_streamed_tool_use(claude, model):
    with claude.messages.stream(model=model, max_tokens=64, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather?"}]) as stream:
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "mock"}, "input_json_delta pieces join"
    assert final.stop_reason == "tool_use"


def test_the_upstream_gets_the_translated_request(claude, upstream):
    claude.messages.create(model="chat", max_tokens=33, system="Be brief.", stop_sequences=["END"],
                           extra_body={"top_k": 5}, thinking={"type": "enabled", "budget_tokens": 1024},
                           metadata={"user_id": "u1"},
                           messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    body = upstream.last("primary")["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert body["max_tokens"] == 33 and body["stop"] == ["END"] and body["model"] == "primary"
    assert not {"top_k", "thinking", "metadata"} & set(body), "nothing Anthropic's goes to an OpenAI-compatible upstream"
    claude.messages.create(model="claude", max_tokens=33, extra_body={"top_k": 5}, metadata={"user_id": "u1"},
                           messages=HELLO)
    body = upstream.last("claude-mock")["body"]
    assert body["top_k"] == 5 and body["metadata"] == {"user_id": "u1"}, "an Anthropic upstream gets them"


def test_failover_from_an_openai_upstream_to_an_anthropic_one(claude, upstream):
    upstream.script("msg-down", [{"status": 503, "times": 3}])
    before = upstream.count("claude-after-openai")
    m = claude.messages.create(model="openai-then-claude", max_tokens=64, messages=HELLO)
    assert m.content[0].text.startswith(TEXT)
    assert upstream.count("claude-after-openai") == before + 1, "answered by the Anthropic provider"


def test_bearer_token_works_as_well(gateway):
    client = anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.token, api_key=None, max_retries=0)
    assert client.messages.create(model="chat", max_tokens=8, messages=HELLO).content[0].text.startswith("Hello")


def test_count_tokens(claude):
    short = claude.messages.count_tokens(model="chat", messages=HELLO).input_tokens
    long = claude.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "Say hello " * 200}])
    assert 0 < short < long.input_tokens


def test_errors_take_anthropics_shape(gateway, claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert e.value.body["error"]["type"] == "not_found_error" and "no-such-model" in e.value.body["error"]["message"]
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="not-a-token", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="chat", max_tokens=8, messages=HELLO)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    pdf = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="chat", max_tokens=8, messages=[{"role": "user", "content": [pdf]}])
    assert e.value.body["error"]["message"].startswith("messages[0].content[0]: a user turn cannot carry a \"document\" block")
    headers = {"x-api-key": gateway.token, "content-type": "application/json"}
    r = httpx.post(gateway.url + "/v1/messages", headers=headers,
                   json={"model": "chat", "max_tokens": 8, "messages": HELLO})
    assert r.status_code == 400 and r.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "anthropic-version: header is required (e.g. 2023-06-01)"}}
    r = httpx.post(gateway.url + "/v1/messages", headers={**headers, "anthropic-version": "2023-06-01"},
                   json={"model": "chat", "messages": HELLO})
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens: Field required"


def test_audited_as_messages(gateway, claude):
    claude.messages.with_raw_response.create(model="chat", max_tokens=8, messages=HELLO,
                                             extra_headers={"x-request-id": "py-messages-audit"})
    mine = audit_events(gateway, "py-messages-audit")
    assert [(e["kind"], e["action"], e["resource"], e["status"]) for e in mine] == [("chat", "messages", "chat", 200)]
    assert mine[0]["details"]["completionTokens"] > 0 and mine[0]["details"]["target"] == "up/primary"


def test_a_token_quota_counts_every_api(upstream):
    """Chat, embeddings and messages spend one daily token quota."""
    g = Gateway(upstream, tenant_spec="  limits: { tokensPerDay: 1000 }\n")
    try:
        claude = anthropic.Anthropic(base_url=g.url, api_key=g.token, max_retries=0)
        claude.messages.create(model="chat", max_tokens=400, messages=HELLO)
        g.client().embeddings.create(model="embed", input=" ".join(["word"] * 700), encoding_format="float")
        with pytest.raises(anthropic.RateLimitError) as e:
            claude.messages.create(model="chat", max_tokens=400, messages=HELLO)
        assert e.value.body["error"]["type"] == "rate_limit_error" and "tokens per day" in e.value.body["error"]["message"]
    finally:
        g.stop()


def test_a_budget_refuses_both_sdks_with_402_which_they_do_not_retry(upstream):
    """A spent budget is a 402 in each API's shape; the SDKs, at their default retries, send it once."""
    g = Gateway(upstream, tenant_spec='  limits: { budget: { amount: "0.0001", period: Day } }\n')
    try:
        # "chat" costs 2.5/M input and 10/M output: 16 output tokens fit, 400 do not.
        ok = g.client().chat.completions.with_raw_response.create(model="chat", max_tokens=4, messages=HELLO)
        assert ok.headers["x-budget-limit"] == "0.0001"
        sdk = openai.OpenAI(base_url=g.url + "/v1", api_key=g.token)  # default max_retries: 2
        with pytest.raises(openai.APIStatusError) as e:
            sdk.chat.completions.create(model="chat", max_tokens=400, messages=HELLO)
        assert e.value.status_code == 402
        assert e.value.body["code"] == "budget_exceeded" and "The tenant budget of 0.0001 USD per day" in e.value.body["message"]
        assert e.value.response.headers["x-budget-scope"] == "tenant"
        claude = anthropic.Anthropic(base_url=g.url, api_key=g.token)  # default max_retries: 2
        with pytest.raises(anthropic.APIStatusError) as e:
            claude.messages.create(model="chat", max_tokens=400, messages=HELLO)
        assert e.value.status_code == 402 and e.value.body["error"]["type"] == "billing_error"
        metrics = httpx.get(g.url + "/metrics").text
        assert 'tenantgate_ratelimit_denied_total{reason="BudgetExceeded"} 2' in metrics, "one request each: no retries"
    finally:
        g.stop()
