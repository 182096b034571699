"""The `gemini` provider: Google's Gemini API (generateContent and
streamGenerateContent over SSE) with the key in `x-goog-api-key`, behind every
chat client API; e2e/mock-llm plays the Gemini API and checks what it checks
(a key, the request's contents and roles)."""

import json

import anthropic
import httpx

TEXT = "Hello from the Tenantgate"
HELLO = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
}


def test_the_double_refuses_what_gemini_refuses(upstream):
    url = upstream.url + "/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    r = httpx.post(url, json=body)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED", "no key"
    r = httpx.post(url, json={"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
                   headers={"x-goog-api-key": "k"})
    assert r.status_code == 400 and "valid role" in r.json()["error"]["message"]


def test_chat(client, upstream):
    r = client.chat.completions.create(model="gemini", messages=[{"role": "system", "content": "Be brief."}, *HELLO])
    assert r.choices[0].message.content.startswith(TEXT) and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    last = upstream.last("gemini-2.5-flash")
    assert last["credential"] == "key-one", "the key in x-goog-api-key, from the provider's Secret"
    assert last["body"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}


def test_streaming_with_usage(client):
    chunks = list(client.chat.completions.create(model="gemini", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith(TEXT)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0


def test_function_call_round_trip(client, upstream):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="gemini", messages=ask, tools=[WEATHER])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "mock"}
    sent = upstream.last("gemini-2.5-flash")["body"]
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER["function"]["parameters"]
    r2 = client.chat.completions.create(model="gemini", tools=[WEATHER], messages=[
        *ask, r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}])
    assert "sunny, 21C" in r2.choices[0].message.content
    response = upstream.last("gemini-2.5-flash")["body"]["contents"][-1]["parts"][0]["functionResponse"]
    assert response["name"] == "get_weather", "the function response names its function"


def test_streamed_function_call(client):
    stream = client.chat.completions.create(model="gemini", messages=[{"role": "user", "content": "Weather?"}],
                                            tools=[WEATHER], tool_choice="required", stream=True)
    calls = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "mock"}


def test_responses_and_messages_on_gemini(gateway, client):
    assert client.responses.create(model="gemini", input="Say hello").output_text.startswith(TEXT)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0)
    with claude.messages.stream(model="gemini", max_tokens=32, messages=HELLO) as stream:
        assert "".join(stream.text_stream).startswith(TEXT)


def test_failover_from_gemini_to_openai(client, upstream):
    upstream.script("gemini-down", [{"status": 503, "times": 3}])
    before = upstream.count("after-gemini")
    r = client.chat.completions.create(model="gemini-then-openai", messages=HELLO)
    assert r.choices[0].message.content.startswith(TEXT) and upstream.count("after-gemini") == before + 1
