"""Real MCP clients sign in to `/mcp` by discovery alone and call a tenant tool:
Claude Code (`claude mcp add --transport http`, `claude mcp login`, then
`claude -p`, npm package pinned in e2e/lib/agent-clis) and the MCP Inspector's
CLI (`@modelcontextprotocol/inspector-cli`, pinned in
gateway/tests/node/package.json). Neither is given a token: each gets the 401,
follows its `resource_metadata` to the Protected Resource Metadata (RFC 9728),
finds the tenant's identity provider there and signs in with the authorization
code flow and PKCE.

The identity provider is a small authorization server of this module on
127.0.0.1, the tenant's issuer: RFC 8414 metadata, dynamic client registration
(RFC 7591), `/authorize` that takes only S256 code challenges, registered
redirect URIs and the gateway's resource (RFC 8707), and `/token` that checks
the code verifier against the challenge and mints a token whose audience is
that resource, signed with the tenant's development key. The "browser" each
client opens is a script that follows the authorization URL to the client's
own loopback callback, as a user who clicks "allow" would."""

import base64
import hashlib
import json
import os
import pty
import secrets
import select
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, Gateway, free_port
from test_agent_clis import clis, offline_env  # noqa: F401 (clis: the fixture)

SCOPE = "mcp:tools"


class AuthorizationServer:
    """The tenant's identity provider, on a free 127.0.0.1 port (see the module's text)."""

    def __init__(self) -> None:
        self.gateway: Gateway | None = None  # set once the gateway runs: it mints the tokens
        self.resource = ""
        self.clients: dict[str, dict] = {}
        self.codes: dict[str, dict] = {}
        self.issued: list[dict] = []  # one entry per token: the client, subject and audience
        self.refused: list[str] = []  # why a request was refused
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def refuse(self, error: str, description: str) -> None:
                server.refused.append(f"{error}: {description}")
                self.reply(400, {"error": error, "error_description": description})

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                    return self.reply(200, server.metadata())
                if url.path == "/authorize":
                    return server.authorize(self, dict(urllib.parse.parse_qsl(url.query)))
                self.reply(404, {"error": "not_found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.path == "/register":
                    return server.register(self, json.loads(body))
                if self.path == "/token":
                    return server.token(self, dict(urllib.parse.parse_qsl(body)))
                self.reply(404, {"error": "not_found"})

        self.http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.issuer = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def metadata(self) -> dict:
        return {
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "registration_endpoint": f"{self.issuer}/register",
            "response_types_supported": ["code"], "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"], "token_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [SCOPE],
        }

    def register(self, handler, body: dict) -> None:
        uris = body.get("redirect_uris") or []
        if not uris or not all(urllib.parse.urlsplit(u).hostname in ("localhost", "127.0.0.1") for u in uris):
            return handler.refuse("invalid_redirect_uri", f"loopback redirect URIs only: {uris}")
        client_id = "client-" + secrets.token_hex(8)
        self.clients[client_id] = {"redirect_uris": uris, "name": body.get("client_name", "")}
        handler.reply(201, {**body, "client_id": client_id, "token_endpoint_auth_method": "none"})

    def authorize(self, handler, q: dict) -> None:
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return handler.refuse("unauthorized_client", f"unknown client {q.get('client_id')}")
        if q.get("redirect_uri") not in client["redirect_uris"]:
            return handler.refuse("invalid_request", f"unregistered redirect_uri {q.get('redirect_uri')}")
        if q.get("response_type") != "code":
            return handler.refuse("unsupported_response_type", str(q.get("response_type")))
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return handler.refuse("invalid_request", "PKCE with S256 is required")
        if q.get("resource") != self.resource:
            return handler.refuse("invalid_target", f"resource {q.get('resource')!r} is not {self.resource}")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {**q, "client": client["name"]}
        query = urllib.parse.urlencode({"code": code, **({"state": q["state"]} if "state" in q else {})})
        handler.reply(302, headers={"Location": f"{q['redirect_uri']}?{query}"})

    def token(self, handler, form: dict) -> None:
        if form.get("grant_type") != "authorization_code":
            return handler.refuse("unsupported_grant_type", str(form.get("grant_type")))
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["client_id"] != form.get("client_id"):
            return handler.refuse("invalid_grant", "unknown or used code, or another client's")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return handler.refuse("invalid_grant", "redirect_uri differs from the authorization request's")
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
            return handler.refuse("invalid_grant", "code_verifier does not match the code_challenge")
        resource = form.get("resource", grant["resource"])
        if resource != grant["resource"]:
            return handler.refuse("invalid_target", "resource differs from the authorization request's")
        subject = f"{grant['client'] or 'client'}@example.com"
        token = self.gateway.mint("--issuer", self.issuer, "--audience", resource, "--subject", subject,
                                  "--roles", "developer")
        self.issued.append({"client": grant["client"], "subject": subject, "audience": resource})
        handler.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": SCOPE})

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def idp():
    server = AuthorizationServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(upstream, echo, idp):
    """A gateway whose identity provider is `idp` and whose MCP resource is its own
    URL, with the echo connection (prefix `echo`)."""
    port = free_port()
    connection = f"""
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: echo, namespace: tg-test }}
spec:
  url: {echo.url}/mcp
  tools: {{ prefix: echo, deny: ["secret_*"] }}
  timeoutSeconds: 5
"""
    idp.resource = f"http://127.0.0.1:{port}/mcp"
    spec = f"  mcp:\n    resource: {idp.resource}\n    scopes: [\"{SCOPE}\"]\n"
    g = Gateway(upstream, extra_manifests=connection, port=port, tenant_spec=spec, issuer=idp.issuer)
    idp.gateway = g
    yield g
    g.stop()


def browser(tmp_path: Path) -> Path:
    """A `BROWSER` that "clicks allow": follows the authorization URL (and its
    redirect to the client's loopback callback), noting each URL it opened."""
    script = tmp_path / "browser"
    script.write_text(f"""#!{os.sys.executable}
import sys, urllib.request
with open({str(tmp_path / 'opened')!r}, "a") as f:
    f.write(sys.argv[1] + "\\n")
urllib.request.urlopen(sys.argv[1], timeout=30).read()
""")
    script.chmod(0o755)
    return script


def in_terminal(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[int, str]:
    """Runs `cmd` on a pseudo-terminal of its own (`claude mcp login` signs in
    only from a terminal); its exit status and everything it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "TERM": "xterm"}, stdin=follower, stdout=follower,
                            stderr=follower, start_new_session=True)
    os.close(follower)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
        return proc.wait(timeout=10), output.decode(errors="replace")
    finally:
        os.close(leader)


def test_claude_code_signs_in_by_discovery_and_calls_a_tenant_tool(gw, idp, upstream, echo, clis, tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {**offline_env(home), "BROWSER": str(browser(tmp_path))}

    def claude(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        out = subprocess.run([str(clis / "claude"), *args], cwd=work, env=env, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"claude {' '.join(args)}: {out.stderr[-2000:]}{out.stdout[-2000:]}"
        return out

    claude("mcp", "add", "--scope", "user", "--transport", "http", "tenant", gw.url + "/mcp")
    status, output = in_terminal([str(clis / "claude"), "mcp", "login", "tenant"], work, env, timeout=120)
    assert status == 0, output[-3000:]
    opened = (tmp_path / "opened").read_text().split()
    assert len(opened) == 1 and opened[0].startswith(f"{idp.issuer}/authorize?"), opened
    asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(opened[0]).query))
    assert asked["resource"] == idp.resource and asked["code_challenge_method"] == "S256", asked
    assert [t["audience"] for t in idp.issued] == [idp.resource] and not idp.refused, (idp.issued, idp.refused)

    upstream.script("agent-model", [
        {"tool_call": "mcp__tenant__echo_echo", "tool_arguments": {"text": "signed in by discovery"}},
        {"reply": "The echo tool said: signed in by discovery."},
    ])
    calls = echo.calls()
    # The model is reached with the tenant's API token; the MCP server only with the token of the sign-in.
    llm_env = {"ANTHROPIC_BASE_URL": gw.url, "ANTHROPIC_API_KEY": gw.token}
    env.update(llm_env)
    out = claude("-p", "Call the echo tool with the text 'signed in by discovery'.", "--model", "agent",
                 "--allowedTools", "mcp__tenant__echo_echo", "--output-format", "json", timeout=180)
    result = json.loads(out.stdout)
    assert result["is_error"] is False and "signed in by discovery" in result["result"], result
    assert echo.calls() == calls + 1, "Claude Code called the tenant's tool through /mcp"
    second = upstream.http.get("/_control/requests", params={"model": "agent-model"}).json()[-1]
    tool_results = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_results and "signed in by discovery" in json.dumps(tool_results[0]), second["messages"]


@pytest.fixture(scope="module")
def node_clients() -> Path:
    out = subprocess.run([str(ROOT / "e2e/lib/node-clients")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def test_the_mcp_inspector_cli_signs_in_by_discovery_and_calls_a_tenant_tool(gw, idp, echo, clis, node_clients,
                                                                              tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**offline_env(home), "PATH": f"{clis}:{os.environ['PATH']}", "BROWSER": str(browser(tmp_path))}
    issued, calls = len(idp.issued), echo.calls()
    callback = f"http://127.0.0.1:{free_port()}/oauth/callback"
    status, output = in_terminal(
        [str(node_clients / "node_modules/.bin/inspector"), "--cli", gw.url + "/mcp", "--callback-url", callback,
         "--method", "tools/call", "--tool-name", "echo_echo", "--tool-arg", "text=inspected"],
        tmp_path, env, timeout=120)
    assert status == 0, output[-3000:]
    assert "inspected" in output, output[-3000:]
    assert echo.calls() == calls + 1, "the Inspector called the tenant's tool through /mcp"
    opened = (tmp_path / "opened").read_text().split()
    assert len(opened) == 1 and opened[0].startswith(f"{idp.issuer}/authorize?"), opened
    asked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(opened[0]).query))
    assert asked["resource"] == idp.resource and asked["redirect_uri"] == callback, asked
    assert [t["audience"] for t in idp.issued[issued:]] == [idp.resource] and not idp.refused, (idp.issued, idp.refused)
