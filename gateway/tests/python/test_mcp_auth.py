"""/mcp as an OAuth protected resource, with the official MCP Python SDK's
OAuth client (`mcp.client.auth.OAuthClientProvider`): a client that knows
only the gateway's URL gets a 401, follows its `resource_metadata` to the
Protected Resource Metadata (RFC 9728), finds the tenant's identity provider
there, registers, gets a token bound to the resource (RFC 8707) and lists the
tools its roles may use (`tools.access`). The identity provider is ours, in
process: the tenant's issuer `https://issuer.test` is routed to it by the
client's transport, and it mints tokens with the tenant's development key."""

import asyncio
import json
import urllib.parse

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from conftest import Gateway, free_port

ISSUER = "https://issuer.test"


class IdentityProvider(httpx2.AsyncBaseTransport):
    """The tenant's issuer as an authorization server (RFC 8414 metadata,
    dynamic client registration, authorization code with PKCE), answering
    requests for `https://issuer.test`; every other request goes to the network."""

    def __init__(self, gateway: Gateway, roles: str) -> None:
        self.gateway = gateway
        self.roles = roles
        self.network = httpx2.AsyncHTTPTransport()
        self.seen: list[str] = []  # every URL the client asked for, in order
        self.token_requests: list[dict] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = str(request.url)
        self.seen.append(url)
        if not url.startswith(ISSUER + "/"):
            return await self.network.handle_async_request(request)
        path = request.url.path
        if path == "/.well-known/oauth-authorization-server":
            return httpx2.Response(200, json={
                "issuer": ISSUER, "authorization_endpoint": f"{ISSUER}/authorize", "token_endpoint": f"{ISSUER}/token",
                "registration_endpoint": f"{ISSUER}/register", "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"], "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
            })
        if path == "/register":
            body = json.loads(await request.aread())
            return httpx2.Response(201, json={**body, "client_id": "sdk-client", "token_endpoint_auth_method": "none"})
        if path == "/token":
            form = dict(urllib.parse.parse_qsl((await request.aread()).decode()))
            self.token_requests.append(form)
            # The audience is the resource the client asked for, and nothing else.
            token = self.gateway.mint("--audience", form["resource"], "--subject", "sdk-user", "--roles", self.roles)
            return httpx2.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": 600})
        return httpx2.Response(404)


class Memory:
    """Token storage of one client run."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


async def discover_and_list(url: str, idp: IdentityProvider) -> tuple[set[str], dict]:
    """What an SDK client that knows only `url` lists, and the authorization request it made."""
    authorization: dict = {}

    async def redirect(to: str) -> None:
        authorization.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(to).query))

    async def callback() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code="code-1", state=authorization["state"])

    auth = OAuthClientProvider(
        url, OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/callback"], client_name="sdk test"),
        Memory(), redirect_handler=redirect, callback_handler=callback,
    )
    http = httpx2.AsyncClient(auth=auth, transport=idp, timeout=30)
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            names: set[str] = set()
            for _ in range(100):  # the echo connection connects in the background
                names = {t.name for t in (await s.list_tools()).tools}
                if "echo_slow" in names:
                    break
                await asyncio.sleep(0.1)
            return names, authorization


@pytest.fixture(scope="module")
def bound(upstream, echo):
    """A gateway whose MCP resource is its own URL, with scopes, and an `echo`
    connection whose `echo` tool only developers may use."""
    port = free_port()
    connection = f"""
apiVersion: tenantgate.dev/v1alpha1
kind: McpConnection
metadata: {{ name: echo, namespace: tg-test }}
spec:
  url: {echo.url}/mcp
  tools: {{ prefix: echo, deny: ["secret_*"], access: [{{ tools: [echo], roles: [developer] }}] }}
  timeoutSeconds: 5
"""
    spec = f"  mcp:\n    resource: http://127.0.0.1:{port}/mcp\n    scopes: [\"mcp:tools\"]\n"
    g = Gateway(upstream, extra_manifests=connection, port=port, tenant_spec=spec)
    yield g
    g.stop()


def test_an_sdk_client_that_knows_only_the_url_discovers_where_to_get_a_token(bound):
    url = bound.url + "/mcp"
    idp = IdentityProvider(bound, roles="developer")
    names, authorization = asyncio.run(discover_and_list(url, idp))
    assert {"echo_echo", "echo_slow"} <= names, names
    # The 401's resource_metadata, then the identity provider named there.
    metadata = bound.url + "/.well-known/oauth-protected-resource/mcp"
    assert metadata in idp.seen, idp.seen
    assert idp.seen.index(metadata) < idp.seen.index(f"{ISSUER}/.well-known/oauth-authorization-server"), idp.seen
    # The token was asked for the resource (RFC 8707) and the scopes the gateway advertised.
    assert authorization["resource"] == url and authorization["scope"] == "mcp:tools", authorization
    assert idp.token_requests[0]["resource"] == url


def test_the_sdk_client_lists_only_the_tools_its_roles_may_use(bound):
    idp = IdentityProvider(bound, roles="dev")
    names, _ = asyncio.run(discover_and_list(bound.url + "/mcp", idp))
    assert "echo_slow" in names and "echo_echo" not in names, names


def test_the_challenge_and_metadata_over_raw_http(bound):
    url = bound.url + "/mcp"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"accept": "application/json, text/event-stream"}
    r = httpx.post(url, json=call, headers=headers)
    assert r.status_code == 401
    metadata_url = bound.url + "/.well-known/oauth-protected-resource/mcp"
    assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{metadata_url}", scope="mcp:tools"'
    assert httpx.get(metadata_url).json() == {
        "resource": url, "authorization_servers": [ISSUER], "scopes_supported": ["mcp:tools"],
        "bearer_methods_supported": ["header"], "resource_name": "test",
    }
    # The tenant's API token is not for this resource: refused, saying why, never echoing it.
    api_token = bound.mint("--audience", "tenantgate")
    r = httpx.post(url, json=call, headers={**headers, "authorization": f"Bearer {api_token}"})
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and url in challenge, challenge
    assert "audience" in r.json()["error"]["message"] and api_token not in r.text
