"""The circuit breaker against mock-llm misbehaving, seen through the SDK."""

import time

import openai
import pytest


def ask(client, model="breaker"):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def test_breaker_opens_then_half_open_probe_recovers(client, upstream):
    upstream.script("brk", [], default={"status": 503})
    with pytest.raises(openai.InternalServerError) as e:  # 502 after three attempts
        ask(client)
    assert e.value.status_code == 502
    seen = upstream.count("brk")
    with pytest.raises(openai.InternalServerError) as e:  # open: 503 without an upstream call
        ask(client)
    assert e.value.status_code == 503 and e.value.response.headers.get("retry-after")
    assert upstream.count("brk") == seen
    # Still failing at the half-open probe: exactly one call, then open again.
    time.sleep(1.1)
    with pytest.raises(openai.InternalServerError):
        ask(client)
    assert upstream.count("brk") == seen + 1
    # Healed: the next probe closes the breaker.
    upstream.script("brk", [])
    time.sleep(1.1)
    assert ask(client).choices[0].message.content.startswith("Hello")
    assert ask(client).choices[0].message.content.startswith("Hello")
