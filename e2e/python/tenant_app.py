"""A tenant's application: what a tenant developer writes against their
gateway with the official `openai` and `mcp` Python SDKs (the versions pinned
in gateway/tests/python/requirements.txt)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import httpx2
import openai
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client


def client(url: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30)


def chat(url: str, token: str, model: str, text: str) -> str:
    reply = client(url, token).chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content or ""


def stream(url: str, token: str, model: str, text: str) -> tuple[int, str, str | None]:
    """Streams a chat: (number of content chunks, the text, the finish reason)."""
    chunks, parts, finish = 0, [], None
    for chunk in client(url, token).chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], stream=True
    ):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta.content
        if delta:
            chunks += 1
            parts.append(delta)
        finish = chunk.choices[0].finish_reason or finish
    return chunks, "".join(parts), finish


def models(url: str, token: str) -> set[str]:
    return {m.id for m in client(url, token).models.list()}


@asynccontextmanager
async def mcp_session(url: str, token: str):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, streamable_http_client(url + "/mcp", http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield s


def mcp_tools(url: str, token: str) -> set[str]:
    async def go():
        async with mcp_session(url, token) as s:
            return {t.name for t in (await s.list_tools()).tools}

    return asyncio.run(go())


def mcp_call(url: str, token: str, tool: str, arguments: dict) -> tuple[bool, str]:
    """Calls a tool: (is_error, its text)."""

    async def go():
        async with mcp_session(url, token) as s:
            r = await s.call_tool(tool, arguments)
            return bool(r.is_error), "".join(getattr(c, "text", "") for c in r.content)

    try:
        return asyncio.run(go())
    except BaseExceptionGroup as group:
        # The SDK's task groups wrap a JSON-RPC error answer (MCPError): raise the error itself.
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise leaf from None


def stateless_mcp_calls(url: str, token: str, tool: str, calls: list[dict], pause: float = 0) -> list[str]:
    """Calls `tool` once per arguments of `calls` as a 2026-07-28 client does
    (stateless: no initialize, no session), each request on a new connection,
    `pause` seconds apart; the texts of the results."""

    async def go():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                  limits=httpx2.Limits(max_keepalive_connections=0))
        async with http, Client(streamable_http_client(url + "/mcp", http_client=http),
                                mode="2026-07-28", cache=None) as c:
            texts = []
            for i, arguments in enumerate(calls):
                if i and pause:
                    await asyncio.sleep(pause)
                r = await c.call_tool(tool, arguments)
                texts.append("".join(getattr(block, "text", "") for block in r.content))
            return texts

    return asyncio.run(go())


def chat_with_mcp_tools(url: str, token: str, model: str, text: str, connections: list[str],
                        max_steps: int = 4) -> tuple[str, dict[str, str]]:
    """A chat in which the gateway runs the tenant's MCP tools itself
    (docs/mcp-tools-in-chat.md): (the answer, the response headers)."""
    raw = client(url, token).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        extra_body={"tenantgate": {"mcp": {"connections": connections, "maxSteps": max_steps}}},
    )
    reply = raw.parse()
    return reply.choices[0].message.content or "", dict(raw.headers)
