"""Per-user OAuth (authorization code with PKCE) for an McpConnection, end to
end: a real HTTP client follows the gateway's redirect to a small
authorization server of ours and back to the gateway's callback; the user's
own token (never the gateway's JWT) reaches the upstream (e2e/mcp-echo),
is refreshed before it expires, is stored encrypted, stays out of the logs,
and an admin can list (without values) and revoke it."""

import asyncio
import base64
import hashlib
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import Echo, Gateway, authed_connection
from test_mcp_sdk import session, text_of, wait_tool

CLIENT_SECRET = "pkce-client-s3cret"


class AuthServer:
    """An OAuth 2.0 authorization server of ours: `/authorize` signs the
    browser in as `login_as` without asking and redirects back with a code;
    `/token` checks client authentication, redirect_uri, PKCE (S256) and
    single use of codes, and serves authorization_code and refresh_token
    grants (refresh tokens rotate). Tokens carry a random part so a search
    for them in files and logs cannot match by accident."""

    def __init__(self, expires_in: int) -> None:
        self.expires_in = expires_in
        self.login_as = "alice-at-provider"
        self.authorize_requests: list[dict] = []
        self.token_requests: list[dict] = []
        self.codes: dict[str, dict] = {}
        self.refresh: dict[str, str] = {}
        self.issued: list[str] = []  # every access and refresh token
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                server.authorize_requests.append(q)
                code = "code-" + secrets.token_hex(8)
                server.codes[code] = {"challenge": q.get("code_challenge"), "redirect_uri": q.get("redirect_uri"),
                                      "user": server.login_as}
                back = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
                self.reply(302, headers={"location": back})

            def do_POST(self):
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers.get("content-length", 0))).decode()))
                server.token_requests.append(form)
                basic = self.headers.get("authorization", "")
                creds = base64.b64decode(basic.removeprefix("Basic ")).decode() if basic.startswith("Basic ") else ""
                if creds != f"gateway:{CLIENT_SECRET}":
                    return self.error(401, "invalid_client")
                grant = form.get("grant_type")
                if grant == "authorization_code":
                    c = server.codes.pop(form.get("code", ""), None)  # single use
                    if c is None or c["redirect_uri"] != form.get("redirect_uri"):
                        return self.error(400, "invalid_grant")
                    verifier = form.get("code_verifier", "")
                    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                    if challenge != c["challenge"]:
                        return self.error(400, "invalid_grant")
                    user = c["user"]
                elif grant == "refresh_token":
                    user = server.refresh.pop(form.get("refresh_token", ""), None)  # rotated
                    if user is None:
                        return self.error(400, "invalid_grant")
                else:
                    return self.error(400, "unsupported_grant_type")
                access = f"AT-{user}-{len(server.token_requests)}-{secrets.token_hex(6)}"
                refresh = f"RT-{user}-{len(server.token_requests)}-{secrets.token_hex(6)}"
                server.refresh[refresh] = user
                server.issued += [access, refresh]
                body = ('{"access_token":"%s","refresh_token":"%s","token_type":"Bearer","expires_in":%d,"scope":"mcp"}'
                        % (access, refresh, server.expires_in)).encode()
                self.reply(200, body, {"content-type": "application/json"})

            def error(self, status: int, code: str):
                self.reply(status, ('{"error":"%s"}' % code).encode(), {"content-type": "application/json"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()


def manifests(echo: Echo, auth: AuthServer) -> str:
    return authed_connection("peruser", f"{echo.url}/mcp", secret="pkce-client",
                             string_data=f"{{ secret: {CLIENT_SECRET} }}", auth=f"""
        oauth2AuthorizationCode:
          authorizationUrl: {auth.url}/authorize
          tokenUrl: {auth.url}/token
          clientId: gateway
          clientSecretRef: {{ name: pkce-client, key: secret }}
          scopes: [mcp.read, mcp.call]
          resource: https://mcp.example/peruser
        """)


@pytest.fixture(scope="module")
def setup(upstream, tmp_path_factory):
    echo = Echo()
    # Tokens live 3 s: the gateway refreshes them after half their life.
    auth = AuthServer(expires_in=3)
    log = tmp_path_factory.mktemp("oauth") / "gateway.log"
    g = Gateway(upstream, extra_manifests=manifests(echo, auth), log=log, log_level="debug")
    wait_tool(g, "peruser_echo")
    yield g, echo, auth, log
    g.stop()
    auth.stop()
    echo.stop()


def call(g: Gateway, token: str, text: str = "hi"):
    async def run():
        async with session(g.url, token) as s:
            return await s.call_tool("peruser_echo", {"text": text})

    return asyncio.run(run())


def authorize(g: Gateway, token: str) -> httpx.Response:
    """The browser flow: start (authenticated), then follow every redirect."""
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, follow_redirects=True, timeout=10) as c:
        return c.get(f"{g.url}/oauth/mcp/peruser/start")


def start_url(g: Gateway, token: str) -> dict:
    r = httpx.get(f"{g.url}/oauth/mcp/peruser/start",
                  headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(body["authorizationUrl"]).query)) | body


def callback(g: Gateway, params: dict, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{g.url}/oauth/mcp/peruser/callback", params=params, headers=headers)


def test_full_flow_uses_each_users_own_token_and_refreshes_it(setup):
    g, echo, auth, log = setup
    alice = g.mint("--subject", "alice@example.com")
    bob = g.mint("--subject", "bob@example.com")

    # Before authorizing: a clear error naming the start URL; nothing reaches the upstream.
    calls = echo.calls()
    r = call(g, alice)
    assert r.is_error and "/oauth/mcp/peruser/start" in text_of(r), text_of(r)
    assert echo.calls() == calls

    # The start route needs the caller's token like every route.
    assert httpx.get(f"{g.url}/oauth/mcp/peruser/start").status_code == 401

    r = authorize(g, alice)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "authorized" and r.json()["subject"] == "alice@example.com"
    q = auth.authorize_requests[-1]
    assert q["response_type"] == "code" and q["client_id"] == "gateway"
    assert q["redirect_uri"] == f"{g.url}/oauth/mcp/peruser/callback"
    assert q["scope"] == "mcp.read mcp.call" and q["resource"] == "https://mcp.example/peruser"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43 and len(q["state"]) >= 43
    exchange = auth.token_requests[-1]
    assert exchange["grant_type"] == "authorization_code" and exchange["resource"] == "https://mcp.example/peruser"
    alice_access = auth.issued[-2]

    assert text_of(call(g, alice, "as alice")) == "as alice"
    assert httpx.get(echo.url + "/last-auth").text == f"Bearer {alice_access}"

    # Bob authorizes as another provider user; each call carries its caller's own token.
    auth.login_as = "bob-at-provider"
    assert authorize(g, bob).json()["subject"] == "bob@example.com"
    bob_access = auth.issued[-2]
    assert text_of(call(g, bob, "as bob")) == "as bob"
    assert httpx.get(echo.url + "/last-auth").text == f"Bearer {bob_access}"
    assert text_of(call(g, alice, "alice again")) == "alice again"
    last = httpx.get(echo.url + "/last-auth").text
    assert last.startswith("Bearer AT-alice-at-provider-"), last
    for jwt in (alice, bob, g.token):
        assert jwt not in last

    # Refreshed before expiry (3 s tokens, refreshed after half their life).
    refreshes = sum(1 for t in auth.token_requests if t["grant_type"] == "refresh_token")
    time.sleep(1.8)
    assert text_of(call(g, alice, "later")) == "later"
    new = [t for t in auth.token_requests if t["grant_type"] == "refresh_token"]
    assert len(new) > refreshes and new[-1]["resource"] == "https://mcp.example/peruser"
    last = httpx.get(echo.url + "/last-auth").text
    assert last.startswith("Bearer AT-alice-at-provider-") and last.removeprefix("Bearer ") != alice_access
    # The rotated refresh token was stored: another refresh works.
    time.sleep(1.8)
    assert text_of(call(g, alice, "even later")) == "even later"
    assert sum(1 for t in auth.token_requests if t["grant_type"] == "refresh_token") > len(new)


def test_state_misuse_is_refused_with_a_clear_400(setup):
    g, echo, auth, _ = setup
    carol = g.mint("--subject", "carol@example.com")
    mallory = g.mint("--subject", "mallory@example.com")

    r = callback(g, {"state": "never-issued", "code": "x"})
    assert r.status_code == 400 and "unknown or already used" in r.json()["error"]["message"]

    # Another user's token at the callback: refused, and the state is spent.
    s = start_url(g, carol)
    assert s["expiresIn"] == 600
    r = callback(g, {"state": s["state"], "code": "x"}, token=mallory)
    assert r.status_code == 400 and "another user" in r.json()["error"]["message"], r.text
    r = callback(g, {"state": s["state"], "code": "x"}, token=carol)
    assert r.status_code == 400 and "already used" in r.json()["error"]["message"]

    # A completed authorization's callback URL replayed: refused.
    with httpx.Client(headers={"Authorization": f"Bearer {carol}"}, follow_redirects=True) as c:
        r = c.get(f"{g.url}/oauth/mcp/peruser/start")
        assert r.status_code == 200, r.text
        replay = r.url
    r = httpx.get(str(replay))
    assert r.status_code == 400 and "already used" in r.json()["error"]["message"]

    # The provider refusing, missing parameters, a connection without per-user OAuth.
    s = start_url(g, carol)
    r = callback(g, {"state": s["state"], "error": "access_denied", "error_description": "the user said no"})
    assert r.status_code == 400 and "access_denied: the user said no" in r.json()["error"]["message"]
    assert callback(g, {"state": s["state"]}).json()["error"]["param"] == "code"
    r = httpx.get(f"{g.url}/oauth/mcp/nope/start", headers={"Authorization": f"Bearer {carol}"})
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_admin_lists_without_values_and_revokes(setup):
    g, echo, auth, _ = setup
    dave = g.mint("--subject", "dave@example.com")
    admin = g.mint("--subject", "root@example.com", "--roles", "tenant-admin")
    assert authorize(g, dave).status_code == 200
    assert text_of(call(g, dave)) == "hi"

    assert httpx.get(f"{g.url}/admin/v1/mcp-tokens", headers={"Authorization": f"Bearer {dave}"}).status_code == 403
    r = httpx.get(f"{g.url}/admin/v1/mcp-tokens", params={"subject": "dave@example.com"},
                  headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    [row] = r.json()["data"]
    assert row["connection"] == "peruser" and row["subject"] == "dave@example.com" and row["hasRefreshToken"]
    assert "AT-" not in r.text and "RT-" not in r.text and "sealed" not in r.text

    r = httpx.delete(f"{g.url}/admin/v1/mcp-tokens/peruser/dave@example.com", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    calls = echo.calls()
    r = call(g, dave)
    assert r.is_error and "/oauth/mcp/peruser/start" in text_of(r)
    assert echo.calls() == calls
    r = httpx.delete(f"{g.url}/admin/v1/mcp-tokens/peruser/dave@example.com", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 404


def test_tokens_are_encrypted_at_rest_and_never_logged(setup):
    g, echo, auth, log = setup
    erin = g.mint("--subject", "erin@example.com")
    assert authorize(g, erin).status_code == 200
    assert text_of(call(g, erin)) == "hi"
    assert auth.issued
    # Every file the gateway wrote (SQLite database and WAL included), and its debug log.
    files = [p for p in Path(g.dir).rglob("*") if p.is_file()] + [log]
    assert any(p.suffix in (".db", ".sqlite", ".db-wal") or "wal" in p.name for p in files), files
    for p in files:
        data = p.read_bytes()
        for token in auth.issued:
            assert token.encode() not in data, f"{token[:6]}... in {p}"
    # The log is a real debug log with the flow in it.
    assert "oauth/mcp/peruser/callback" in log.read_text()


def test_an_upstream_that_refuses_anonymous_listing_is_listed_with_an_authorized_users_token(upstream):
    """Until someone authorizes, the connection cannot even be listed; then it
    is listed with the token of the user who authorized last, while each call
    still goes out with its caller's own token (or is refused for a caller
    without one)."""
    echo = Echo("--require-auth")
    auth = AuthServer(expires_in=3600)
    g = Gateway(upstream, extra_manifests=manifests(echo, auth))
    try:
        alice = g.mint("--subject", "alice@example.com")
        bob = g.mint("--subject", "bob@example.com")
        time.sleep(1)

        async def names():
            async with session(g.url, alice) as s:
                return {t.name for t in (await s.list_tools()).tools}

        assert "peruser_echo" not in asyncio.run(names())
        assert authorize(g, alice).status_code == 200
        alice_access = auth.issued[-2]
        deadline = time.monotonic() + 40
        while "peruser_echo" not in asyncio.run(names()):
            assert time.monotonic() < deadline, "never listed with the authorized user's token"
            time.sleep(0.3)
        assert httpx.get(echo.url + "/last-auth").text == f"Bearer {alice_access}"
        r = call(g, bob)
        assert r.is_error and "/oauth/mcp/peruser/start" in text_of(r)
        assert text_of(call(g, alice, "mine")) == "mine"
        assert httpx.get(echo.url + "/last-auth").text == f"Bearer {alice_access}"
    finally:
        g.stop()
        auth.stop()
        echo.stop()
