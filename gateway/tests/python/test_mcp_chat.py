"""MCP tools inside chat (docs/mcp-tools-in-chat.md) with the official openai
SDK: the extension field sent with `extra_body`, e2e/mock-llm as the model and
e2e/mcp-echo (rmcp) as the MCP server."""

import time

import httpx
import openai
import pytest

from conftest import Gateway

QUESTION = [{"role": "user", "content": "What does the echo tool say?"}]


@pytest.fixture(scope="module")
def gw(upstream, echo):
    manifests = f"""
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: echo, namespace: tg-test }}
spec:
  transport: streamableHttp
  url: {echo.url}/mcp
  tools: {{ prefix: echo, deny: ["secret_*", "slow", "grow"] }}
  timeoutSeconds: 5
"""
    g = Gateway(upstream, extra_manifests=manifests)
    client = g.client()
    deadline = time.monotonic() + 30
    while True:
        try:
            client.chat.completions.create(model="chat", messages=QUESTION,
                                           extra_body={"tenantgate": {"mcp": {"connections": ["echo"]}}})
            break
        except openai.BadRequestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield g
    g.stop()


def test_the_model_uses_an_mcp_tool(gw, upstream, echo):
    before, seen = echo.calls(), len(requests(upstream))
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, extra_body={"tenantgate": {"mcp": {"connections": ["echo"], "maxSteps": 2}}})
    reply = raw.parse()
    assert reply.choices[0].message.content == "Tool results: mock"
    assert reply.choices[0].finish_reason == "stop"
    assert raw.headers["tenantgate-mcp-turns"] == "2"
    assert raw.headers["tenantgate-mcp-tool-calls"] == "1"
    assert raw.headers["tenantgate-mcp-finish"] == "answered"
    assert echo.calls() == before + 1
    turns = requests(upstream)[seen:]
    assert len(turns) == 2
    assert all("tenantgate" not in t for t in turns)
    # Only the allowed tool is offered, under its /mcp name.
    assert [t["function"]["name"] for t in turns[0]["tools"]] == ["echo_echo"]
    assert turns[1]["messages"][-1] == {"role": "tool", "tool_call_id": turns[1]["messages"][-2]["tool_calls"][0]["id"],
                                        "content": "mock"}


def test_streamed_answer_and_step_limit(gw, upstream, echo):
    before, seen = echo.calls(), len(requests(upstream))
    raw = gw.client().chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, stream=True, stream_options={"include_usage": True},
        tool_choice="required",
        extra_body={"tenantgate": {"mcp": {"connections": ["*"], "maxSteps": 3}}})
    assert raw.headers["tenantgate-mcp-finish"] == "max_steps"
    assert raw.headers["tenantgate-mcp-steps"] == "3"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Tool results: mock"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert echo.calls() == before + 3
    turns = requests(upstream)[seen:]
    assert len(turns) == 4
    assert turns[-1]["tool_choice"] == "none" and turns[-1]["stream"] is True
    assert all("tenantgate" not in t for t in turns)


def test_streamed_answer_without_limit(gw):
    stream = gw.client().chat.completions.create(
        model="chat", messages=QUESTION, stream=True,
        extra_body={"tenantgate": {"mcp": {"connections": ["echo"]}}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Tool results: mock"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_unknown_connection_and_bad_steps_are_400(gw, upstream, echo):
    before_calls, before_model = echo.calls(), upstream.count("primary")
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=QUESTION,
                                       extra_body={"tenantgate": {"mcp": {"connections": ["github"]}}})
    assert e.value.param == "tenantgate.mcp.connections[0]"
    assert "github" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages=QUESTION,
                                       extra_body={"tenantgate": {"mcp": {"connections": ["echo"], "maxSteps": 99}}})
    assert e.value.param == "tenantgate.mcp.maxSteps"
    assert echo.calls() == before_calls and upstream.count("primary") == before_model


def test_tool_calls_are_audited_per_turn(gw):
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, extra_headers={"x-request-id": "py-mcp-chat"},
        extra_body={"tenantgate": {"mcp": {"connections": ["echo"]}}})
    assert raw.headers["x-request-id"] == "py-mcp-chat"
    admin = gw.mint("--roles", "tenant-admin", "--subject", "auditor")
    deadline = time.monotonic() + 5
    while True:
        events = httpx.get(gw.url + "/admin/v1/audit?limit=1000", headers={"Authorization": f"Bearer {admin}"}).json()
        mine = [e for e in events["data"] if e.get("requestId") == "py-mcp-chat"]
        if len(mine) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(e["kind"] for e in mine) == ["chat", "chat", "toolCall"], mine
    tool = next(e for e in mine if e["kind"] == "toolCall")
    assert tool["resource"] == "echo_echo" and tool["details"]["via"] == "chat"


def requests(upstream) -> list:
    return upstream.http.get("/_control/requests", params={"model": "primary"}).json()
