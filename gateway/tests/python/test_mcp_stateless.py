"""/mcp at the 2026-07-28 revision, which is stateless: no initialize and no
session, every request carries its protocol version and client capabilities,
so any replica answers any request. Two gateways over the same manifests, with
no Redis, behind a round-robin proxy (what a Service without session affinity
does); the official MCP Python SDK's client, pinned to 2026-07-28, discovers,
lists and calls tools through it, and each replica answers some of them."""

import asyncio
import http.server
import itertools
import json
import threading
import time

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import Gateway, free_port

ECHO_CONNECTION = """
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: echo, namespace: tg-test }}
spec:
  url: {url}/mcp
  tools: {{ prefix: echo, deny: ["secret_*"] }}
  timeoutSeconds: 5
"""


class RoundRobin:
    """An HTTP proxy on 127.0.0.1 that sends each request to the next backend
    in turn, streaming the answer back, and records which backend answered
    which JSON-RPC method."""

    def __init__(self, backends: list[str]) -> None:
        self.answered: list[tuple[int, str]] = []
        turn = itertools.cycle(range(len(backends)))
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    backend = next(turn)
                try:
                    method = json.loads(body).get("method", "")
                except ValueError:
                    method = ""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                with httpx.stream("POST", backends[backend] + self.path, content=body, headers=headers,
                                  timeout=30) as r:
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(k, v)
                    self.end_headers()
                    for chunk in r.iter_raw():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                with lock:
                    proxy.answered.append((backend, method))

            def do_GET(self):  # noqa: N802: the 2026-07-28 revision has no standalone stream
                self.send_response(405)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def replicas(upstream, echo):
    gateways = [Gateway(upstream, extra_manifests=ECHO_CONNECTION.format(url=echo.url)) for _ in range(2)]
    for g in gateways:
        # Each replica connects to the echo server on its own, in the background.
        for _ in range(200):
            metrics = httpx.get(g.url + "/metrics").text
            if 'tenantgate_mcp_connection_up{connection="echo"} 1' in metrics:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("a replica did not connect to the echo server")
    proxy = RoundRobin([g.url for g in gateways])
    yield gateways, proxy
    proxy.stop()
    for g in gateways:
        g.stop()


def test_a_stateless_client_is_answered_by_either_replica(replicas):
    gateways, proxy = replicas

    async def run():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {gateways[0].token}"}, timeout=30)
        async with http, Client(streamable_http_client(proxy.url + "/mcp", http_client=http),
                                mode="2026-07-28", cache=None) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            texts = []
            for i in range(4):
                result = await client.call_tool("echo_echo", {"text": f"call {i}"})
                texts.append("".join(getattr(c, "text", "") for c in result.content))
            return names, texts

    names, texts = asyncio.run(run())
    assert "echo_echo" in names and "echo_secret_delete" not in names, names
    assert texts == [f"call {i}" for i in range(4)]
    calls = [backend for backend, method in proxy.answered if method == "tools/call"]
    assert sorted(set(calls)) == [0, 1], proxy.answered
    assert not any(method == "initialize" for _, method in proxy.answered), "2026-07-28 has no initialize"


def test_a_stateless_request_without_its_metadata_is_refused_naming_it(replicas):
    gateways, _ = replicas
    headers = {"authorization": f"Bearer {gateways[1].token}", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}
    r = httpx.post(gateways[1].url + "/mcp", headers=headers,
                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["code"] == -32602, error
    assert "io.modelcontextprotocol/protocolVersion" in error["message"], error
    assert "io.modelcontextprotocol/clientCapabilities" in error["message"], error


def test_a_stateless_client_hears_of_list_changes_on_its_subscription(replicas):
    """subscriptions/listen (2026-07-28): the client opens a subscription for tool
    list changes, a tool call makes the echo upstream add a tool, and the
    change arrives on the subscription; the list then has the new tool."""
    gateways, _ = replicas

    async def run():
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {gateways[0].token}"}, timeout=30)
        async with http, Client(streamable_http_client(gateways[0].url + "/mcp", http_client=http),
                                mode="2026-07-28", cache=None) as client:
            before = {t.name for t in (await client.list_tools()).tools}
            async with client.listen(tools_list_changed=True, prompts_list_changed=True) as sub:
                await client.call_tool("echo_grow", {})
                event = await asyncio.wait_for(anext(aiter(sub)), 20)
            after = {t.name for t in (await client.list_tools()).tools}
        return before, event, after

    before, event, after = asyncio.run(run())
    assert "echo_extra" not in before, before
    assert type(event).__name__ == "ToolsListChanged", event
    assert "echo_extra" in after, after


def test_results_forwarded_from_a_2025_upstream_carry_their_result_type(replicas):
    """The echo upstream's session is a 2025-11-25 one, whose results have no
    resultType; a 2026-07-28 client's result says `complete`."""
    gateways, _ = replicas
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "echo_echo", "arguments": {"text": "typed"}, "_meta": meta}}
    headers = {"authorization": f"Bearer {gateways[0].token}", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo_echo"}
    r = httpx.post(gateways[0].url + "/mcp", headers=headers, json=body)
    assert r.status_code == 200, (r.status_code, r.text)
    lines = [line.removeprefix("data:").strip() for line in r.text.splitlines() if line.startswith("data:")]
    message = json.loads(lines[-1]) if lines else r.json()
    assert message["result"]["resultType"] == "complete", message
    assert message["result"]["content"][0]["text"] == "typed", message
