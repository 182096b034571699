"""The official MCP conformance suite (npm @modelcontextprotocol/conformance,
pinned in gateway/tests/node/package.json) runs its server
scenarios against the gateway's `/mcp`, whose one McpConnection is the MCP Go
SDK's conformance server (conformance/everything-server of the SDK module
pinned in gateway/tests/mcp-conformance/server/go.mod, from the Go module
proxy), the server the scenarios are written against, over streamable HTTP.
e2e/lib/node-clients installs the suite, e2e/lib/mcp-conformance builds the server. The connection's prefix is
empty, so the gateway exposes the server's tool and prompt names and resource
URIs as the suite asks for them.

Each revision's requirement set runs at its own wire (`--requirements
2025-11-25`: initialize and sessions; `--requirements 2026-07-28`: stateless,
per-request `_meta`). A scenario the set requires passes when none of its
checks failed; the scenarios a set runs without scoring them (extensions,
pending) are not counted, as the suite does not count them. Scenarios the
gateway does not pass as the suite writes them are listed, each with its
reason, in gateway/tests/mcp-conformance/expected-failures.txt: each must fail
(an entry that passes is stale and fails this test), and every other required
scenario must pass.

The suite cannot send an Authorization header, so it talks to a small
forwarding proxy in this module that adds the tenant's bearer token to each
request and passes everything else through unchanged (Host and Origin
included, responses streamed)."""

import asyncio
import http.client
import json
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import ROOT, Gateway, free_port

REVISIONS = ("2025-11-25", "2026-07-28")
EXPECTED_FAILURES = ROOT / "gateway/tests/mcp-conformance/expected-failures.txt"
# Request headers not passed on (hop-by-hop ones, and the client's own
# Authorization, which the proxy sets).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "authorization", "content-length"}


def auth_proxy(target_port: int, token: str) -> ThreadingHTTPServer:
    """A forwarding proxy on a free 127.0.0.1 port to the gateway at
    `target_port` that adds `Authorization: Bearer <token>` to every request
    (the conformance CLI has no option for a header). Bodies are read whole
    (requests are small JSON-RPC messages); responses, SSE streams included,
    are passed on as they arrive."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def read_body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def forward(self) -> None:
            body = self.read_body()
            conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=120)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.putheader("Authorization", f"Bearer {token}")
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                response = conn.getresponse()
                self.send_response_only(response.status, response.reason)
                chunked = response.getheader("Content-Length") is None and response.status not in (204, 304)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP - {"content-length"}:
                        self.send_header(name, value)
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while data := response.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                    self.wfile.flush()
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            except OSError:
                # The client went away (it closes SSE streams it is done with).
                self.close_connection = True
            finally:
                conn.close()

        do_GET = do_POST = do_DELETE = do_OPTIONS = forward

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            pass  # a client that reset an idle keep-alive connection

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def required_server_scenarios(suite: Path, revision: str) -> list[str]:
    """The `server:` list of the suite's requirements/<revision>.yaml."""
    names, inside = [], False
    for line in (suite / "requirements" / f"{revision}.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            inside = line.rstrip() == "server:"
        elif inside:
            names.append(line.strip().removeprefix("- ").strip())
    assert names, f"no server scenarios in the {revision} requirements"
    return names


def expected_failures() -> dict[tuple[str, str], dict[str | None, str]]:
    """(revision, scenario) -> {check id, or None for the whole scenario: reason}."""
    entries: dict[tuple[str, str], dict[str | None, str]] = {}
    for number, line in enumerate(EXPECTED_FAILURES.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        assert len(fields) == 3, f"{EXPECTED_FAILURES.name}:{number}: want REVISIONS SCENARIO[:CHECK] REASON"
        revisions, target, reason = fields
        scenario, _, check = target.partition(":")
        for revision in revisions.split(","):
            assert revision in REVISIONS, f"{EXPECTED_FAILURES.name}:{number}: unknown revision {revision}"
            entries.setdefault((revision, scenario), {})[check or None] = reason
    return entries


def results(out: Path) -> dict[str, list[dict]]:
    """Scenario -> its checks, from the suite's output directory."""
    found = {}
    for checks in out.glob("server-*/checks.json"):
        scenario = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name).removeprefix("server-")
        found[scenario] = json.loads(checks.read_text())
    return found


async def catalog(url: str, token: str) -> set[str]:
    """The names of the tools and prompts and the URIs of the resources the gateway offers."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, streamable_http_client(url + "/mcp", http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            prompts = {p.name for p in (await s.list_prompts()).prompts}
            resources = {str(r.uri) for r in (await s.list_resources()).resources}
            return tools | prompts | resources


@pytest.fixture(scope="module")
def suite_dir() -> Path:
    """Where e2e/lib/node-clients installed the suite (gateway/tests/node/package.json)."""
    out = subprocess.run([str(ROOT / "e2e/lib/node-clients")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def server_bin() -> str:
    """The Go SDK's conformance server, built by e2e/lib/mcp-conformance."""
    out = subprocess.run([str(ROOT / "e2e/lib/mcp-conformance")], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def node_bin() -> str:
    """The directory of Node.js 22, which the suite needs."""
    out = subprocess.run([str(ROOT / "e2e/lib/agent-clis")], check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def reference_server(server_bin, tmp_path_factory):
    """The Go SDK's conformance server on a free port, with sessions (so that it
    can ask the gateway for sampling and elicitation on a 2025-11-25 connection)."""
    port = free_port()
    log = tmp_path_factory.mktemp("conformance") / "everything-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server_bin, "-http", f"127.0.0.1:{port}",
                                 "-stateless=false"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the conformance server exited: {log.read_text()}"
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)  # any answer will do
                break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the conformance server did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def gw(upstream, reference_server):
    manifests = f"""
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: conformance, namespace: tg-test }}
spec:
  transport: streamableHttp
  url: {reference_server}
  tools: {{ prefix: "" }}
  timeoutSeconds: 10
"""
    g = Gateway(upstream, extra_manifests=manifests)
    try:
        # The gateway is ready before its upstream: wait until its catalog is complete.
        want = {"test_simple_text", "test_simple_prompt", "test://static-text"}
        deadline = time.monotonic() + 60
        while not want <= (offered := asyncio.run(catalog(g.url, g.token))):
            assert time.monotonic() < deadline, f"the conformance server's catalog did not reach the gateway: {sorted(offered)}"
            time.sleep(0.3)
        yield g
    finally:
        g.stop()


def test_conformance_server_scenarios(gw, suite_dir, node_bin, tmp_path, capsys):
    proxy = auth_proxy(int(gw.url.rsplit(":", 1)[1]), gw.token)
    url = f"http://127.0.0.1:{proxy.server_address[1]}/mcp"
    env = dict(os.environ, PATH=f"{node_bin}:{os.environ['PATH']}")
    suite = suite_dir / "node_modules/@modelcontextprotocol/conformance"
    expected = expected_failures()
    passed, failed, expected_failed, stale, details = 0, [], 0, [], []
    try:
        for revision in REVISIONS:
            out = tmp_path / revision
            run = subprocess.run(
                [str(suite_dir / "node_modules/.bin/conformance"), "server", "--url", url,
                 "--requirements", revision, "-o", str(out)],
                env=env, capture_output=True, text=True, timeout=300,
            )
            found = results(out)
            required = required_server_scenarios(suite, revision)
            for key in expected:
                if key[0] == revision:
                    assert key[1] in required, f"{EXPECTED_FAILURES.name}: {key[1]} is not required for {revision}"
            for scenario in required:
                checks = found.get(scenario)
                if checks is None:
                    failed.append(f"{revision} {scenario}: no result\n{run.stdout[-4000:]}{run.stderr[-2000:]}")
                    continue
                failing = {c["id"]: c for c in checks if c["status"] == "FAILURE"}
                warnings = [c for c in checks if c["status"] == "WARNING"]
                details += [f"{revision} {scenario}:{c['id']} warning: {c.get('errorMessage')}" for c in warnings]
                excused = expected.get((revision, scenario), {})
                if None in excused:
                    unexcused = {}
                    if not failing:
                        stale.append(f"{revision} {scenario}")
                else:
                    unexcused = {i: c for i, c in failing.items() if i not in excused}
                    stale += [f"{revision} {scenario}:{i}" for i in excused if i not in failing]
                if not failing:
                    passed += 1
                elif unexcused:
                    failed += [f"{revision} {scenario}:{i}: {str(c.get('errorMessage') or c['description'])[:600]}"
                               for i, c in unexcused.items()]
                else:
                    expected_failed += 1
    finally:
        proxy.shutdown()
        proxy.server_close()
    failed_scenarios = len({f.split(":")[0] for f in failed})
    with capsys.disabled():
        print(f"\nMCP conformance passed={passed} failed={failed_scenarios} expected_failures={expected_failed}")
    report = []
    if failed:
        report += ["failing checks (revision scenario:check: message):", *failed]
    if stale:
        report += [f"expected failures that passed (remove them from {EXPECTED_FAILURES.name}):", *stale]
    if details:
        report += ["warnings (not counted as failures):", *details]
    assert not failed and not stale, "\n".join(report)


def test_rebinding_request_without_a_token_is_refused(gw):
    """What the suite's dns-rebinding-protection scenario sends (Host and Origin of
    another site), as a page that rebound a name to the gateway would send it:
    without the tenant's token, which is where the gateway's protection lies."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}}
    r = httpx.post(gw.url + "/mcp", json=body, headers={
        "Host": "evil.example.com", "Origin": "http://evil.example.com",
        "Accept": "application/json, text/event-stream"})
    assert r.status_code == 401
